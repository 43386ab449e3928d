"""`llm-jax bench`: time the real train step (the `llm-jax train` code path) and report MFU.

MFU = achieved model FLOP/s / peak FLOP/s. On CPU the peak is a large matmul in the compute dtype measured in this
same process (CPU speeds vary from machine to machine and minute to minute; only a same-run peak is fair); on
accelerators it comes from the table in monitor/flops.py, or `monitor.peak_tflops`.
"""

import json
import resource
import statistics
import tempfile
import time

import jax
import ml_collections

from llm_jax.models.layout import on_mesh
from llm_jax.monitor.flops import flops_per_token, peak_flops
from llm_jax.parallel.sharding import to_global
from llm_jax.train.setup import build_run


def _profile(compiled, state, batches, print_fn) -> dict[str, float]:
    """Trace a few more steps and print where their time went, by kind of op (monitor/breakdown.py)."""
    from llm_jax.monitor import breakdown as bd

    text = compiled.as_text()
    module = text.split(None, 2)[1].rstrip(",")  # "HloModule jit_train_step, ..."
    with tempfile.TemporaryDirectory() as logdir:
        jax.profiler.start_trace(logdir)
        for batch in batches:
            state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        jax.profiler.stop_trace()
        op_seconds = bd.op_times(bd.latest_trace(logdir), module)
    categories = bd.classify_ops(text)
    per_step = {k: v / len(batches) for k, v in bd.breakdown(op_seconds, categories).items()}
    total = sum(per_step.values()) or float("nan")
    print_fn(f"profile of {len(batches)} steps: op time per step {total * 1e3:.1f} ms (summed over threads)")
    for name, seconds in per_step.items():
        print_fn(f"  {name:<18} {seconds * 1e3:8.1f} ms  {seconds / total:6.1%}")
    print_fn("  slowest ops: " + ", ".join(f"{op} ({cat}) {s / len(batches) * 1e3:.1f} ms"
                                          for op, cat, s in bd.top_ops(op_seconds, categories, 6)))
    return {f"profile_{k.replace('/', '_')}_s": v for k, v in per_step.items()}


def bench(cfg: ml_collections.ConfigDict, steps: int = 5, warmup: int = 2, print_fn=print,
          profile: bool = False) -> dict:
    if steps < 1 or warmup < 0:
        raise ValueError(f"bench needs steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    run = build_run(cfg)
    t = run.cfg.train
    tokens_per_step = t.global_batch * t.seq_len
    state = run.state
    batches = [to_global(run.data.train.batch_at(i), run.batch_sharding) for i in range(warmup + steps)]
    print_fn(f"model preset '{run.cfg.model_preset}': {run.num_params / 1e6:.1f}M parameters, "
             f"batch {t.global_batch} x {t.seq_len} tokens, {run.mesh.size} device(s) {dict(run.mesh.shape)}")

    with on_mesh(run.mesh, run.rules):
        start = time.perf_counter()
        compiled = run.jit_train.lower(state, batches[0]).compile()
        compile_s = time.perf_counter() - start
        times = []
        usage = resource.getrusage(resource.RUSAGE_SELF)  # taken again when the first timed step starts
        for i, batch in enumerate(batches):
            if i == warmup:
                usage = resource.getrusage(resource.RUSAGE_SELF)
            start = time.perf_counter()
            state, metrics = compiled(state, batch)
            jax.block_until_ready((state, metrics))
            if i >= warmup:
                times.append(time.perf_counter() - start)
        # Kernel time and page faults of the timed steps: memory that the allocator hands back to the system and
        # faults in again shows here, not in the profile (runtime_memory.py).
        end = resource.getrusage(resource.RUSAGE_SELF)
        system_s, faults = end.ru_stime - usage.ru_stime, end.ru_minflt - usage.ru_minflt
        profiled = _profile(compiled, state, batches[warmup:][:3], print_fn) if profile else {}

    # Measured after the steps so that both see the same machine state.
    peak, peak_source = peak_flops(run.mesh.devices.flat, run.cfg.model.dtype, run.cfg.monitor.peak_tflops, 2048)
    step_s = statistics.mean(times)
    fpt = flops_per_token(run.cfg.model, t.seq_len)
    achieved = fpt * tokens_per_step / step_s
    result = {
        "tokens_per_s": tokens_per_step / step_s,
        "step_time_s": step_s,
        "step_time_std_s": statistics.stdev(times) if len(times) > 1 else 0.0,
        "compile_s": compile_s,
        "flops_per_token": fpt,
        "achieved_gflops": achieved / 1e9,
        "peak_gflops": peak / 1e9,
        "mfu": achieved / peak if peak else float("nan"),
        "system_time_fraction": system_s / sum(times),
        "minor_faults_per_step": faults / steps,
        "loss": float(metrics["loss"]),
        **profiled,
    }
    print_fn(f"compile {compile_s:.1f}s | step {step_s * 1e3:.1f} ms ± {result['step_time_std_s'] * 1e3:.1f} "
             f"(over {steps} steps after {warmup} warm-up) | {result['tokens_per_s']:,.0f} tokens/s")
    print_fn(f"model FLOPs/token {fpt / 1e6:.1f}M | achieved {achieved / 1e9:.1f} GFLOP/s | peak "
             f"{peak / 1e9:.1f} GFLOP/s ({peak_source}) | MFU {result['mfu']:.1%}")
    print_fn(f"system (kernel) time {result['system_time_fraction']:.1%} of the step time | "
             f"{result['minor_faults_per_step']:,.0f} minor page faults per step")
    print_fn(json.dumps({k: result[k] for k in ("tokens_per_s", "step_time_s", "compile_s", "flops_per_token",
                                                  "mfu", "peak_gflops", "system_time_fraction",
                                                  "minor_faults_per_step")}))
    return result
