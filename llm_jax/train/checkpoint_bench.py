"""`llm-jax bench --checkpoint`: how long checkpointing stalls training, and how fast it writes and reads.

It runs the real code path (`build_run`, `Checkpointer`, the jitted train step) and reports: the steady step time;
how long an async `save` blocks the loop (the target is under 10% of a step) and how much the steps that run
during the background write slow down; the whole save and the restore in MB/s; and, for scale, what `dd` writes
to the same disk. Restore reads files that were just written, so it measures a warm file cache, not the disk.
"""

import json
import math
import os
import pathlib
import shutil
import statistics
import subprocess
import tempfile
import time

import jax
import ml_collections

from llm_jax.checkpoint.manager import Checkpointer
from llm_jax.models.layout import on_mesh
from llm_jax.parallel.sharding import to_global
from llm_jax.train.loop import run_meta
from llm_jax.train.setup import Run, build_run

DD_MIN_MB = 256  # smaller dd writes mostly measure the page cache and fsync latency, not throughput
MB = 1e6


def _timed_steps(run: Run, state, n: int) -> tuple:
    """Run `n` train steps, each waited for; return the new state and each step's seconds."""
    times = []
    for _ in range(n):
        batch = to_global(next(run.data.train), run.batch_sharding)
        start = time.perf_counter()
        state, metrics = run.jit_train(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    return state, times


def _save(run: Run, ckpt: Checkpointer, step: int, state) -> float:
    """Start an async save as the loop does; return how long it blocked."""
    start = time.perf_counter()
    ckpt.save(step, state, run.data.train.get_state(), run_meta(run))
    return time.perf_counter() - start


def _steps_during_save(run: Run, ckpt: Checkpointer, state, most: int) -> tuple:
    """Steps that start while the background write is still going (at least one, at most `most`)."""
    state, times = _timed_steps(run, state, 1)
    while len(times) < most and ckpt.manager.is_saving_in_progress():
        state, more = _timed_steps(run, state, 1)
        times += more
    return state, times


def _disk_bytes(path: pathlib.Path) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def _dd_mb_per_s(directory: pathlib.Path, mb: int) -> float:
    """MB/s of a plain sequential write of `mb` MB, flushed to the disk (conv=fdatasync), in `directory`."""
    target = directory / "dd.tmp"
    try:
        start = time.perf_counter()
        subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={mb}", "conv=fdatasync"],
                       check=True, capture_output=True)
        return mb * 2**20 / MB / (time.perf_counter() - start)
    finally:
        target.unlink(missing_ok=True)


def _measure(run: Run, ckpt: Checkpointer, steps: int) -> dict:
    """All the timings, on the run's mesh; the state is donated from step to step as in the train loop."""
    with on_mesh(run.mesh, run.rules):
        state, _ = _timed_steps(run, run.state, 1)  # compilation
        state, step_times = _timed_steps(run, state, steps)

        # Save 1: blocking time and the whole write with nothing else running (save + wait).
        start = time.perf_counter()
        first_block_s = _save(run, ckpt, 1, state)
        ckpt.wait()
        save_s = time.perf_counter() - start
        checkpoint_bytes = _disk_bytes(ckpt.directory / "1")

        # Save 2: as in training, steps go on while the write runs in the background (the cold first save
        # includes orbax's one-time set-up, so this one is the steady-state blocking time).
        block_s = _save(run, ckpt, 2, state)
        state, during_times = _steps_during_save(run, ckpt, state, steps)
        start = time.perf_counter()
        ckpt.wait()
        tail_s = time.perf_counter() - start

        start = time.perf_counter()
        restored, _ = ckpt.restore(1, state, run.state_sharding)
        jax.block_until_ready(restored)
        restore_s = time.perf_counter() - start
    step_s = statistics.mean(step_times)
    return {"step_time_s": step_s, "step_min_s": min(step_times), "step_max_s": max(step_times),
            "step_during_save_s": statistics.mean(during_times), "steps_during_save": len(during_times),
            "save_block_s": block_s, "save_block_pct_of_step": 100 * block_s / step_s,
            "first_save_block_s": first_block_s, "save_tail_s": tail_s, "save_s": save_s,
            "save_mb_per_s": checkpoint_bytes / MB / save_s, "restore_s": restore_s,
            "restore_mb_per_s": checkpoint_bytes / MB / restore_s, "checkpoint_mb": checkpoint_bytes / MB}


def _report(r: dict, print_fn) -> None:
    slowdown = 100 * (r["step_during_save_s"] / r["step_time_s"] - 1)
    verdict = "under" if r["save_block_pct_of_step"] < 10 else "OVER"
    print_fn(f"step {r['step_time_s'] * 1e3:.1f} ms steady ({r['step_min_s'] * 1e3:.1f} to "
             f"{r['step_max_s'] * 1e3:.1f}) | {r['step_during_save_s'] * 1e3:.1f} ms over the "
             f"{r['steps_during_save']} step(s) that started while a save was writing ({slowdown:+.1f}%)")
    print_fn(f"async save blocks the loop {r['save_block_s'] * 1e3:.1f} ms = {r['save_block_pct_of_step']:.2f}% "
             f"of a step ({verdict} the 10% target; the first save of a run: {r['first_save_block_s'] * 1e3:.1f} "
             f"ms); the write went on {r['save_tail_s'] * 1e3:.0f} ms after those steps")
    print_fn(f"checkpoint {r['checkpoint_mb']:.1f} MB on disk (params + optimizer state {r['state_mb']:.1f} MB in "
             f"memory) | save + wait {r['save_s']:.2f}s = {r['save_mb_per_s']:.0f} MB/s | restore "
             f"{r['restore_s']:.2f}s = {r['restore_mb_per_s']:.0f} MB/s (warm file cache) | dd {r['dd_mb']} MB with "
             f"fdatasync: {r['dd_mb_per_s']:.0f} MB/s")


def bench_checkpoint(cfg: ml_collections.ConfigDict, directory: str | None, steps: int = 3,
                     print_fn=print) -> dict:
    """Time async save, save + wait, restore and `dd` in a fresh temporary directory under `directory` (default:
    the system's), which is deleted afterwards; print a summary, then one JSON line; return the figures."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.checkpoint.async_save = True  # what training uses, and what the blocking time is about
    work = pathlib.Path(tempfile.mkdtemp(prefix="llm-jax-ckpt-bench-", dir=directory))
    try:
        run = build_run(cfg)
        ckpt = Checkpointer(work, cfg.checkpoint)
        try:
            state_bytes = sum(x.nbytes for x in jax.tree.leaves((run.state.params, run.state.opt_state)))
            print_fn(f"model preset '{run.cfg.model_preset}': {run.num_params / 1e6:.1f}M parameters, batch "
                     f"{run.cfg.train.global_batch} x {run.cfg.train.seq_len}, {run.mesh.size} device(s) | "
                     f"writing to {work}")
            result = _measure(run, ckpt, steps)
        finally:
            ckpt.wait()
            ckpt.close()
            run.data.train.close()
        dd_mb = max(DD_MIN_MB, math.ceil(result["checkpoint_mb"]))
        result.update(params=run.num_params, state_mb=state_bytes / MB, dd_mb=dd_mb,
                      dd_mb_per_s=_dd_mb_per_s(work, dd_mb))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _report(result, print_fn)
    print_fn(json.dumps(result))
    return result
