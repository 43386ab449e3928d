"""`llm-jax plan`: the dry-run planner compiles the real train step for a target and reads memory, FLOPs and
collectives off it. In-process plans use subsets of the 8 fake devices; the CLI runs in a subprocess."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax.config.load import apply_flag_overrides
from llm_jax.models.layers import dense
from llm_jax.monitor.hardware import GIB, HARDWARE
from llm_jax.monitor.hlo import group_axes, replica_groups
from llm_jax.train.plan import Target, abstract_step, plan, report
from tests.conftest import TRAIN_CONFIG, small_config
from tests.test_cli import llm_jax

MESH_222 = {"data": 2, "fsdp": 2, "tensor": 2}


def config(*overrides: str):
    cfg = small_config()
    apply_flag_overrides(cfg, list(overrides))
    return cfg


@pytest.fixture(scope="module")
def fsdp8():
    """Scanned layers, FSDP over 8 devices."""
    return plan(config("mesh.data=1", "mesh.fsdp=-1", "model.scan_layers=true"), Target(8), HARDWARE["h100"],
                jax.devices()[:8])


@pytest.fixture(scope="module")
def dp8_unrolled():
    """Unrolled layers, pure data parallelism over 8 devices."""
    return plan(config("mesh.data=-1", "model.scan_layers=false"), Target(8), HARDWARE["h100"], jax.devices()[:8])


def test_fsdp_parameters_and_optimizer_state_per_device_fall_as_one_over_n(fsdp8):
    per_n = {}
    for n in (1, 2, 4, 8):
        step = abstract_step(config("mesh.data=1", "mesh.fsdp=-1"), Target(n), jax.devices()[:n])
        assert dict(step.mesh.shape)["fsdp"] == n
        per_n[n] = step.bytes_per_device(step.state.params), step.bytes_per_device(step.state.opt_state)
    params_1, opt_1 = per_n[1]
    counters = opt_1 - 2 * params_1  # Adam's two moments mirror the parameters; the rest are replicated scalars
    assert 0 < counters <= 64
    for n, (params, opt) in per_n.items():  # every dimension fsdp splits (width 64) divides by 8: exact
        assert params * n == params_1, n
        assert opt == 2 * params_1 // n + counters, n
    assert (fsdp8.param_bytes, fsdp8.opt_bytes) == per_n[8]


def test_a_job_over_the_device_memory_gets_the_does_not_fit_verdict(fsdp8):
    assert fsdp8.total_bytes > fsdp8.param_bytes + fsdp8.opt_bytes  # activations are counted
    roomy = dataclasses.replace(fsdp8, hw=dataclasses.replace(fsdp8.hw, hbm_gib=2 * fsdp8.total_bytes / GIB))
    assert report(roomy)[-1].startswith("fits: ")
    small = dataclasses.replace(fsdp8, hw=dataclasses.replace(fsdp8.hw, hbm_gib=fsdp8.total_bytes / GIB / 2))
    verdict = report(small)[-1]
    assert verdict.startswith(f"DOES NOT FIT: needs {fsdp8.total_bytes / GIB:.2f} GiB per device, the device has ")
    assert "more fsdp" in verdict and "remat=full" in verdict and "per_device_batch" in verdict
    assert "model.attention=chunked" not in verdict and "loss_chunk" not in verdict  # 32 tokens: nothing to cut
    long = small.cfg.copy_and_resolve_references()
    long.train.seq_len, long.model.attention_block_kv, long.model.attention = 4096, 512, "xla"
    verdict = report(dataclasses.replace(small, cfg=long))[-1]
    assert "--config.model.attention=chunked" in verdict and "--config.train.loss_chunk=512" in verdict


def test_collectives_fsdp_gathers_over_fsdp_and_data_parallel_all_reduces_over_data(fsdp8, dp8_unrolled):
    fsdp = {(c.op, c.axes): c for c in fsdp8.cost.collectives}
    gather = fsdp[("all-gather", ("fsdp",))]
    # The layer loop gathers each layer's weights, forward and backward: more executions than instructions.
    assert gather.per_step > gather.in_hlo >= 1 and gather.group == 8 and gather.bytes > 0
    assert ("all-reduce", ("fsdp",)) in fsdp or ("reduce-scatter", ("fsdp",)) in fsdp  # the gradients
    dp = {(c.op, c.axes) for c in dp8_unrolled.cost.collectives}
    assert ("all-reduce", ("data",)) in dp and not any(op == "all-gather" for op, _ in dp)


def test_matmul_flops_count_loop_trips_where_cost_analysis_does_not(fsdp8, dp8_unrolled):
    # Same per-device batch and model: scanned and unrolled layers run the same matmuls, close to 6N + attention.
    assert fsdp8.cost.matmul_flops == pytest.approx(dp8_unrolled.cost.matmul_flops, rel=1e-3)
    assert fsdp8.cost.matmul_flops == pytest.approx(fsdp8.model_flops, rel=0.05)
    assert fsdp8.xla_flops < 0.8 * fsdp8.model_flops  # XLA's own count sees the 2-layer loop body once


@pytest.mark.parametrize("attrs, groups, axes", [
    ("replica_groups={{0,2},{4,6},{1,3},{5,7}}, dimensions={0}", [[0, 2], [4, 6], [1, 3], [5, 7]], ("fsdp",)),
    ("replica_groups=[4,2]<=[2,2,2]T(1,0,2), dimensions={0}", [[0, 1], [4, 5], [2, 3], [6, 7]], ("tensor",)),
    ("replica_groups=mesh['axis_0'=2,'axis_1'=4], device_ids=([2,2,2]T(1,0,2)) {'axis_0'}, dimensions={0}",
     [[0, 2], [1, 3], [4, 6], [5, 7]], ("fsdp",)),
    ("replica_groups=mesh['axis_0'=4,'axis_1'=1,'axis_2'=2] {'axis_0'}, use_global_device_ids=true",
     [[0, 2, 4, 6], [1, 3, 5, 7]], ("data", "fsdp")),
    ("source_target_pairs={{0,1},{1,0},{2,3},{3,2}}", [[0, 1], [1, 0], [2, 3], [3, 2]], ("tensor",)),
])
def test_replica_groups_in_each_printed_form_map_to_mesh_axes(attrs, groups, axes):
    assert replica_groups(attrs) == groups
    assert group_axes(groups, MESH_222) == axes


def test_cli_prints_the_table_and_a_json_last_line():
    out = llm_jax("plan", f"--config={TRAIN_CONFIG}:model=nano,topology=cpu_8dev", "--config.train.seq_len=32",
                  "--config.train.global_batch=16", "--config.mesh.data=1", "--config.mesh.fsdp=-1",
                  "--hbm-gib=0.001", timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "compiled the train step for 8 fake CPU devices" in out.stdout
    assert "memory per device" in out.stdout and "all-gather" in out.stdout
    assert "note: planned at train.seq_len=32, the model takes up to " in out.stdout
    lines = out.stdout.strip().splitlines()
    assert lines[-2].startswith("DOES NOT FIT: needs ")
    result = json.loads(lines[-1])
    assert result["fits"] is False and result["hbm_gib"] == 0.001 and result["devices"] == 8
    assert result["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    assert result["total_gib"] > result["params_gib"] + result["opt_state_gib"] > 0


def _bytes(p, op: str) -> float:
    return sum(c.bytes for c in p.cost.collectives if c.op == op and c.axes == ("fsdp",))


def test_bf16_compute_halves_fsdp_gathers_and_grad_reduce_dtype_halves_the_reduce_scatter(fsdp8):
    """float32 parameters in both: bf16 compute gathers each weight shard after casting it, so half the bytes; a
    bf16 gradient reduction halves the layers' reduce-scatter (the embedding's gradient stays float32)."""
    base = ("mesh.data=1", "mesh.fsdp=-1", "model.scan_layers=true")
    bf16 = plan(config(*base, "model.dtype=bfloat16"), Target(8), HARDWARE["h100"], jax.devices()[:8])
    reduced = plan(config(*base, "model.dtype=bfloat16", "model.grad_reduce_dtype=bfloat16"), Target(8),
                   HARDWARE["h100"], jax.devices()[:8])
    layers = sum(math.prod(p.shape) for p in jax.tree.leaves(abstract_step(
        config(*base), Target(8), jax.devices()[:8]).state.params["layers"])) * 4 / 8  # f32 bytes per device
    # XLA:CPU slices each device's shard out of an all-reduce: counted as the target's reduce-scatter.
    assert _bytes(fsdp8, "reduce-scatter") >= layers
    # Norm scales are used in float32 and gathered so: a little over half.
    assert 0.5 <= _bytes(bf16, "all-gather") / _bytes(fsdp8, "all-gather") < 0.6
    assert _bytes(bf16, "reduce-scatter") == pytest.approx(_bytes(fsdp8, "reduce-scatter"), rel=0.02)
    saved = _bytes(bf16, "reduce-scatter") - _bytes(reduced, "reduce-scatter")
    assert saved == pytest.approx(layers / 2, rel=0.05), (saved, layers)


def test_a_bf16_weight_gradient_equals_the_float32_one_to_bf16_rounding():
    x = jax.random.normal(jax.random.key(0), (64, 32)).astype(jnp.bfloat16)
    w = jax.random.normal(jax.random.key(1), (32, 48)).astype(jnp.bfloat16)
    g = jax.random.normal(jax.random.key(2), (64, 48))

    def grads(dtype):
        return jax.grad(lambda x, w: jnp.sum(dense(x, w, grad_dtype=dtype).astype(jnp.float32) * g), (0, 1))(x, w)

    (dx32, dw32), (dx16, dw16) = grads("float32"), grads("bfloat16")
    np.testing.assert_array_equal(np.asarray(dx16, np.float32), np.asarray(dx32, np.float32))
    exact = np.asarray(x, np.float32).T @ np.asarray(jnp.asarray(g, jnp.bfloat16), np.float32)
    np.testing.assert_allclose(np.asarray(dw16, np.float32), exact, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(np.asarray(dw32, np.float32), exact, rtol=1e-2, atol=1e-2)


def test_a_fused_attention_target_is_planned_with_chunked_and_its_block_traffic_left_out():
    base = ("mesh.data=1", "mesh.fsdp=-1", "model.dtype=bfloat16", "train.seq_len=64", "model.max_seq_len=64",
            "model.attention_block_q=16", "model.attention_block_kv=16")
    fused = plan(config(*base), Target(8), HARDWARE["h100"], jax.devices()[:8])
    counted = plan(config(*base, "model.attention=chunked"), Target(8), HARDWARE["h100"], jax.devices()[:8])
    assert fused.fused_attention == "cudnn" and counted.fused_attention is None
    assert any("runs 'cudnn', planned with 'chunked'" in line for line in report(fused))
    assert fused.cost.matmul_flops == pytest.approx(counted.cost.matmul_flops, rel=1e-6)
    assert fused.cost.bytes_accessed < 0.9 * counted.cost.bytes_accessed
