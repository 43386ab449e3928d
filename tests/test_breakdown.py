"""The profile breakdown's classification of XLA ops, on HLO text of the shapes XLA:CPU prints."""

from llm_jax.monitor.breakdown import breakdown, classify_ops

HLO = """HloModule jit_step, entry_computation_layout={()->f32[]}

%fused_dot (p0: f32[8,4], p1: f32[4,4]) -> f32[8,4] {
  %p0 = f32[8,4]{1,0} parameter(0)
  %p1 = f32[4,4]{1,0} parameter(1)
  %dot.1 = f32[8,4]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %tanh.1 = f32[8,4]{1,0} tanh(%dot.1)
}

%fused_grad_transposed (p0.1: f32[8,4], p1.1: f32[8,4]) -> f32[32] {
  %p0.1 = f32[8,4]{1,0} parameter(0)
  %p1.1 = f32[8,4]{1,0} parameter(1)
  %mul.1 = f32[8,4]{1,0} multiply(%p0.1, %p1.1)
  %transpose.1 = f32[4,8]{0,1} transpose(%mul.1), dimensions={1,0}
  %copy.1 = f32[4,8]{1,0} copy(%transpose.1)
  ROOT %bitcast.1 = f32[32]{0} bitcast(%copy.1)
}

%fused_elementwise (p0.2: f32[8,4]) -> f32[8,4] {
  %p0.2 = f32[8,4]{1,0} parameter(0)
  %transpose.2 = f32[8,4]{0,1} transpose(%p0.2), dimensions={0,1}
  ROOT %exp.1 = f32[8,4]{1,0} exponential(%transpose.2)
}

%body (t: (s32[], f32[8,4])) -> (s32[], f32[8,4]) {
  %t = (s32[], f32[8,4]{1,0}) parameter(0)
  %x = f32[8,4]{1,0} get-tuple-element(%t), index=1
  %all-reduce.1 = f32[8,4]{1,0} all-reduce(%x), replica_groups={}, to_apply=%add
  %i = s32[] get-tuple-element(%t), index=0
  ROOT %tuple.1 = (s32[], f32[8,4]{1,0}) tuple(%i, %all-reduce.1)
}

ENTRY %main (a: f32[8,4], w: f32[4,4]) -> f32[] {
  %a = f32[8,4]{1,0} parameter(0)
  %w = f32[4,4]{1,0} parameter(1)
  %matmul_fusion = f32[8,4]{1,0} fusion(%a, %w), kind=kCustom, calls=%fused_dot
  %grad_fusion = f32[32]{0} fusion(%a, %matmul_fusion), kind=kLoop, calls=%fused_grad_transposed
  %exp_fusion = f32[8,4]{1,0} fusion(%a), kind=kLoop, calls=%fused_elementwise
  %copy.2 = f32[8,4]{0,1} copy(%a)
  %while.1 = (s32[], f32[8,4]{1,0}) while(%init), condition=%cond, body=%body
  ROOT %r = f32[] reduce(%exp_fusion, %zero), dimensions={0,1}, to_apply=%add
}
"""


def test_ops_are_classified_by_what_they_do():
    kinds = classify_ops(HLO)
    assert kinds["matmul_fusion"] == "matmul"  # a dot fused with its activation
    assert kinds["grad_fusion"] == "transpose/copy"  # elementwise work whose output is written transposed
    assert kinds["exp_fusion"] == "elementwise/other"  # a transposed read is not a layout change of the output
    assert kinds["copy.2"] == "transpose/copy" and kinds["all-reduce.1"] == "collective"
    assert kinds["r"] == "elementwise/other" and kinds["while.1"] == "control"


def test_breakdown_sums_by_kind_and_leaves_out_control_flow():
    seconds = {"matmul_fusion": 3.0, "grad_fusion": 1.0, "copy.2": 0.5, "exp_fusion": 0.25, "while.1": 10.0,
               "all-reduce.1": 2.0, "unnamed.7": 0.125}
    assert breakdown(seconds, classify_ops(HLO)) == {"matmul": 3.0, "transpose/copy": 1.5, "collective": 2.0,
                                                     "elementwise/other": 0.375}
