"""The training loop: set up from a config, step, log, evaluate, sample.

The loop dispatches step N before it fetches step N-1's metrics, so the host never waits on the device except
to read numbers that are already computed.
"""

import dataclasses
import json
import math
import pathlib
import time

import flax.linen as nn
import jax
import ml_collections

from llm_jax.monitor.writers import Writers, format_duration
from llm_jax.parallel.sharding import to_global
from llm_jax.train.sample import generate
from llm_jax.train.setup import Run, build_run
from llm_jax.train.state import TrainState


class DivergedError(RuntimeError):
    """The loss became NaN or Inf."""


@dataclasses.dataclass
class Result:
    train_losses: list[float]
    eval_loss: float
    unigram_loss: float
    sample: str
    compile_s: float
    tokens_per_s: float


def evaluate(run: Run, state: TrainState) -> float:
    """Mean loss per token over the first `train.eval_batches` validation batches: the same batches every time."""
    totals = [run.jit_eval(state, to_global(run.data.eval.batch_at(i), run.batch_sharding))
              for i in range(run.cfg.train.eval_batches)]
    totals = jax.device_get(totals)
    return float(sum(t["loss_sum"] for t in totals) / max(sum(t["tokens"] for t in totals), 1.0))


def _steps(run: Run, writers: Writers, handle) -> float:
    """Run every step, evaluating as configured; returns the final evaluation loss."""
    t, state, pending = run.cfg.train, run.state, None
    for step in range(t.steps):
        batch = to_global(next(run.data.train), run.batch_sharding)
        state, metrics = run.jit_train(state, batch)
        if pending is not None:
            handle(*pending)
        pending = (step, metrics)
        if t.eval_every and (step + 1) % t.eval_every == 0 and step + 1 < t.steps:
            handle(*pending)
            pending = None
            eval_loss = evaluate(run, state)
            writers.scalars(step + 1, {"loss": eval_loss}, prefix="eval_")
            writers.print(f"eval at step {step + 1}: loss {eval_loss:.4f}")
    handle(*pending)
    run.state = state
    return evaluate(run, state)


def train(cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path, devices: list | None = None) -> Result:
    """Train from scratch as `cfg` says, on `devices` (default: all)."""
    workdir = pathlib.Path(workdir)
    run = build_run(cfg, devices)
    cfg, mesh, data, t = run.cfg, run.mesh, run.data, run.cfg.train
    writers = Writers(workdir)
    if writers.archived:
        writers.print(f"{workdir} held an earlier run: moved its files to {writers.archived}")
    if writers.enabled:  # the tokenizer's identity too: resuming or evaluating with another one is an error
        (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2) + "\n")
        (workdir / "tokenizer.json").write_text(json.dumps(data.tokenizer.identity(), indent=2) + "\n")
    writers.print(f"devices: {mesh.size} x {mesh.devices.flat[0].device_kind} | mesh {dict(mesh.shape)} | "
                  f"model preset '{cfg.model_preset}' | parameters: {run.num_params / 1e6:.2f}M")
    if cfg.data.corpus != "shakespeare":
        mix = f" | mixture weights {[round(w, 3) for w in data.weights]}" if len(data.weights) > 1 else ""
        writers.print(f"data: {data.train.num_rows:,} train rows, {data.eval.num_rows:,} validation rows{mix} | "
                      f"{data.stats.summary()}")
    writers.print(f"tokenizer: {data.tokenizer.kind} ({data.tokenizer.vocab_size} tokens) | tokens per step: "
                  f"{t.global_batch * t.seq_len:,} | unigram baseline loss: {data.unigram_loss:.4f}")

    tokens_per_step = t.global_batch * t.seq_len
    losses: list[float] = []
    start = time.perf_counter()
    compile_s, window_start, window_steps, tokens_per_s = 0.0, start, 0, 0.0

    def handle(step: int, metrics: dict) -> None:
        """Check and log the metrics of the step with index `step`; records and messages count from 1."""
        nonlocal compile_s, window_start, window_steps, tokens_per_s
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not math.isfinite(metrics["loss"]):
            raise DivergedError(f"loss is {metrics['loss']} at step {step + 1}; lower optimizer.lr, raise "
                                "optimizer.warmup_steps or enable train.z_loss")
        losses.append(metrics["loss"])
        now = time.perf_counter()
        if step == 0:  # the first step includes compilation: log it, but keep it out of throughput
            compile_s, window_start = now - start, now
            writers.scalars(1, {**metrics, "compile_s": compile_s})
            writers.print(f"step 1/{t.steps} | loss {metrics['loss']:.4f} | compile + first step {compile_s:.1f}s")
            return
        window_steps += 1
        if (step + 1) % t.log_every == 0 or step + 1 == t.steps:
            step_s = (now - window_start) / window_steps
            tokens_per_s = tokens_per_step / step_s
            metrics.update(tokens_per_s=tokens_per_s, steps_per_s=1 / step_s, step_time_s=step_s)
            writers.scalars(step + 1, metrics)
            writers.print(f"step {step + 1}/{t.steps} | loss {metrics['loss']:.4f} | lr {metrics['lr']:.2e} | "
                          f"grad norm {metrics['grad_norm']:.3f} | {tokens_per_s:,.0f} tok/s | "
                          f"ETA {format_duration(step_s * (t.steps - step - 1))}")
            window_start, window_steps = now, 0

    try:
        with jax.set_mesh(mesh), nn.logical_axis_rules(run.rules):
            eval_loss = _steps(run, writers, handle)
    finally:
        data.train.close()
    writers.scalars(t.steps, {"loss": eval_loss, "perplexity": math.exp(eval_loss)}, prefix="eval_")

    s = cfg.sample
    new_ids = generate(run.state.model, run.state.params, data.tokenizer.encode(s.prompt), s.max_new_tokens, t.seq_len,
                       s.temperature, s.seed)[0]
    sample = s.prompt + data.tokenizer.decode(new_ids)
    writers.text(t.steps, "samples", sample)
    if writers.enabled:
        (workdir / "samples.txt").write_text(sample + "\n")
    writers.print(f"\nvalidation loss {eval_loss:.4f} (perplexity {math.exp(eval_loss):.2f}) | unigram baseline "
                  f"{data.unigram_loss:.4f} | {tokens_per_s:,.0f} tok/s\n--- sample ---\n{sample}\n--------------")
    writers.print(f"metrics: {workdir / 'metrics.jsonl'} | samples: {workdir / 'samples.txt'} | "
                  f"tensorboard --logdir={workdir / 'tensorboard'}")
    writers.close()
    return Result(losses, eval_loss, data.unigram_loss, sample, compile_s, tokens_per_s)

