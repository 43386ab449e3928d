"""The training loop: set up from a config, resume from the latest checkpoint, step, log, evaluate, save, sample.

The loop dispatches step N before it fetches step N-1's metrics, so the host never waits on the device except
to read numbers that are already computed (and at evaluations and checkpoints, which need the state anyway).
"""

import dataclasses
import json
import math
import pathlib
import time

import flax.linen as nn
import jax
import ml_collections

from llm_jax.checkpoint.manager import Checkpointer, CheckpointError, check_compatible
from llm_jax.checkpoint.params import abstract_like, load_params
from llm_jax.monitor.writers import Writers, format_duration
from llm_jax.parallel.sharding import to_global
from llm_jax.train.preemption import StopRequest, agree_any
from llm_jax.train.sample import generate
from llm_jax.train.setup import Run, build_run
from llm_jax.train.state import TrainState


class DivergedError(RuntimeError):
    """The loss became NaN or Inf."""


@dataclasses.dataclass
class Result:
    train_losses: list[float]  # of the steps this invocation ran (after the checkpoint it resumed from, if any)
    eval_loss: float
    unigram_loss: float
    sample: str
    compile_s: float
    tokens_per_s: float
    start_step: int  # 0, or the step of the checkpoint it resumed from
    stopped_at: int | None = None  # the step after which a SIGTERM/SIGINT stopped the run


def evaluate(run: Run, state: TrainState) -> float:
    """Mean loss per token over the first `train.eval_batches` validation batches: the same batches every time."""
    totals = [run.jit_eval(state, to_global(run.data.eval.batch_at(i), run.batch_sharding))
              for i in range(run.cfg.train.eval_batches)]
    totals = jax.device_get(totals)
    return float(sum(t["loss_sum"] for t in totals) / max(sum(t["tokens"] for t in totals), 1.0))


class StepLog:
    """Checks each step's metrics for NaN/Inf and logs them; the first step of an invocation includes compilation."""

    def __init__(self, cfg: ml_collections.ConfigDict, writers: Writers, start_step: int, skipped: int = 0):
        self.t, self.writers, self.start_step = cfg.train, writers, start_step
        self.losses: list[float] = []
        self.begin = self.window_start = time.perf_counter()
        self.compile_s, self.window_steps, self.tokens_per_s = 0.0, 0, 0.0
        self.skipped = skipped  # skipped updates so far (a resumed run starts from its checkpoint's count)

    def _check(self, step: int, metrics: dict) -> None:
        """NaN/Inf and skipped updates (the step itself decided whether to skip; see guard.py)."""
        t, shown = self.t, f"loss {metrics['loss']:.4g}, gradient norm {metrics['grad_norm']:.4g}"
        advice = "lower optimizer.lr, raise optimizer.warmup_steps or enable train.z_loss"
        if "skipped" in metrics and metrics["skipped"] > self.skipped:
            self.skipped = int(metrics["skipped"])
            self.writers.print(f"warning: step {step + 1}: update skipped ({shown}); {self.skipped} skipped so far")
            if metrics["skip_streak"] >= t.max_skips_in_a_row:
                raise DivergedError(f"{int(metrics['skip_streak'])} updates in a row were skipped, up to step "
                                    f"{step + 1} ({shown}; train.max_skips_in_a_row={t.max_skips_in_a_row}); "
                                    f"{advice}, then resume from the last checkpoint")
            return
        if not all(math.isfinite(metrics[k]) for k in ("loss", "grad_norm", "param_norm")):
            raise DivergedError(f"step {step + 1} diverged ({shown}, parameter norm {metrics['param_norm']:.4g}); "
                                f"nothing from it was saved. {advice}, or set train.nan_policy=skip")

    def __call__(self, step: int, metrics: dict) -> None:
        """Metrics of the step with index `step`; records and messages count steps from 1."""
        t = self.t
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        self._check(step, metrics)
        self.losses.append(metrics["loss"])
        now = time.perf_counter()
        if step == self.start_step:  # includes compilation: log it, but keep it out of throughput
            self.compile_s, self.window_start = now - self.begin, now
            self.writers.scalars(step + 1, {**metrics, "compile_s": self.compile_s})
            self.writers.print(f"step {step + 1}/{t.steps} | loss {metrics['loss']:.4f} | compile + first step "
                               f"{self.compile_s:.1f}s")
            return
        self.window_steps += 1
        if (step + 1) % t.log_every == 0 or step + 1 == t.steps:
            step_s = (now - self.window_start) / self.window_steps
            self.tokens_per_s = t.global_batch * t.seq_len / step_s
            metrics.update(tokens_per_s=self.tokens_per_s, steps_per_s=1 / step_s, step_time_s=step_s)
            self.writers.scalars(step + 1, metrics)
            self.writers.print(f"step {step + 1}/{t.steps} | loss {metrics['loss']:.4f} | lr {metrics['lr']:.2e} | "
                               f"grad norm {metrics['grad_norm']:.3f} | {self.tokens_per_s:,.0f} tok/s | "
                               f"ETA {format_duration(step_s * (t.steps - step - 1))}")
            self.window_start, self.window_steps = now, 0


def run_meta(run: Run) -> dict:
    return {"config": json.loads(run.cfg.to_json_best_effort()), "tokenizer": run.data.tokenizer.identity(),
            "mesh": dict(run.mesh.shape)}


def resume(run: Run, ckpt: Checkpointer, say) -> int:
    """Restore the latest readable checkpoint, if any, into `run` (state and data position); return its step or 0.

    A damaged checkpoint is reported and skipped for the one before it, never deleted.
    """
    for step in sorted(ckpt.all_steps(), reverse=True):
        where = ckpt.directory / str(step)
        try:
            check_compatible(ckpt.read_meta(step), run.data.tokenizer.identity(), where)
            run.state, data_state = ckpt.restore(step, run.state, run.state_sharding)
        except CheckpointError:
            raise
        except Exception as e:  # orbax raises several types for missing or truncated files
            say(f"warning: checkpoint {where} is unreadable ({type(e).__name__}: {str(e)[:200]}); trying the "
                "one before it (this one is left in place for inspection)")
            continue
        run.data.train.set_state(data_state)
        return step
    return 0


def init_from(run: Run, path: str) -> int | None:
    """Start from another run's parameters (checkpoint or exported file) with a fresh optimizer state; return the
    step they were saved at, if known."""
    params, source = load_params(path, abstract_like(run.state.params, run.state_sharding.params))
    check_compatible(source, run.data.tokenizer.identity(), pathlib.Path(path))
    opt_state = jax.jit(run.state.tx.init, out_shardings=run.state_sharding.opt_state)(params)
    run.state = run.state.replace(params=params, opt_state=opt_state)
    return source["step"]


def _steps(run: Run, ckpt: Checkpointer, writers: Writers, log: StepLog, start: int, stop: StopRequest) -> int:
    """Run the steps from `start` on, evaluating and saving as configured; return the last step done (less than
    train.steps when a stop was requested: then a checkpoint of that step has been written)."""
    t, state, pending = run.cfg.train, run.state, None
    for step in range(start, t.steps):
        batch = to_global(next(run.data.train), run.batch_sharding)
        state, metrics = run.jit_train(state, batch)
        if pending is not None:
            log(*pending)
        pending, done = (step, metrics), step + 1
        evaluate_now = t.eval_every and done % t.eval_every == 0 and done < t.steps
        stopping, minutes_due, save_failed = agree_any(stop.requested(), ckpt.minutes_due(), ckpt.poll_failed())
        if save_failed:  # every process stops; the one whose write failed says why
            raise ckpt.error or CheckpointError("another process failed to write its part of a checkpoint")
        save_now = ckpt.should_save(done) or minutes_due or done == t.steps or stopping
        if evaluate_now or save_now:
            log(*pending)  # a checkpoint never holds a state whose loss was not checked
            pending = None
            run.state = state
            if save_now:
                ckpt.save(done, state, run.data.train.get_state(), run_meta(run))
            if stopping:
                return done
            if evaluate_now:
                eval_loss = evaluate(run, state)
                writers.scalars(done, {"loss": eval_loss}, prefix="eval_")
                writers.print(f"eval at step {done}: loss {eval_loss:.4f}")
    if pending is not None:
        log(*pending)
    run.state = state
    return t.steps


def train(cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path, devices: list | None = None) -> Result:
    """Train as `cfg` says on `devices` (default: all), resuming from the workdir's latest checkpoint if any."""
    workdir = pathlib.Path(workdir)
    run = build_run(cfg, devices)
    cfg, mesh, data, t = run.cfg, run.mesh, run.data, run.cfg.train
    ckpt = Checkpointer(workdir, cfg.checkpoint)
    start = resume(run, ckpt, print if jax.process_index() == 0 else lambda _: None)
    writers = Writers(workdir, resume_step=start)
    if writers.archived:
        writers.print(f"{workdir} held an earlier run: moved its files to {writers.archived}")
    if writers.enabled:  # the tokenizer's identity too: resuming or evaluating with another one is an error
        (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2) + "\n")
        (workdir / "tokenizer.json").write_text(json.dumps(data.tokenizer.identity(), indent=2) + "\n")
    if not start and cfg.checkpoint.init_from:
        source_step = init_from(run, cfg.checkpoint.init_from)
        writers.print(f"parameters from {cfg.checkpoint.init_from}" + (f" (step {source_step})" if source_step else "")
                      + "; optimizer state and step start fresh")
    if start:
        writers.print(f"resumed from {ckpt.directory / str(start)}: step {start}, "
                      f"{data.train.examples:,} examples read")
    writers.print(f"devices: {mesh.size} x {mesh.devices.flat[0].device_kind} | mesh {dict(mesh.shape)} | "
                  f"model preset '{cfg.model_preset}' | parameters: {run.num_params / 1e6:.2f}M")
    if cfg.data.corpus != "shakespeare":
        mix = f" | mixture weights {[round(w, 3) for w in data.weights]}" if len(data.weights) > 1 else ""
        writers.print(f"data: {data.train.num_rows:,} train rows, {data.eval.num_rows:,} validation rows{mix} | "
                      f"{data.stats.summary()}")
    writers.print(f"tokenizer: {data.tokenizer.kind} ({data.tokenizer.vocab_size} tokens) | tokens per step: "
                  f"{t.global_batch * t.seq_len:,} | unigram baseline loss: {data.unigram_loss:.4f}")

    log, stop = StepLog(cfg, writers, start, int(jax.device_get(run.state.guard["skipped"]))), StopRequest()
    try:
        with jax.set_mesh(mesh), nn.logical_axis_rules(run.rules):
            last = _steps(run, ckpt, writers, log, start, stop)
            if last < t.steps:
                ckpt.wait()
                why = f"by signal {stop.signal}" if stop.requested() else "because another process got a signal"
                writers.print(f"stopped {why} after step {last}: checkpoint "
                              f"{ckpt.directory / str(last)} written; run the same command again to resume")
                writers.close()
                return Result(log.losses, math.nan, data.unigram_loss, "", log.compile_s, log.tokens_per_s, start,
                              stopped_at=last)
            eval_loss = evaluate(run, run.state)
    finally:
        stop.restore()
        data.train.close()
        ckpt.wait()
        ckpt.close()
    writers.scalars(t.steps, {"loss": eval_loss, "perplexity": math.exp(eval_loss)}, prefix="eval_")
    sample = _sample(run)
    writers.text(t.steps, "samples", sample)
    if writers.enabled:
        (workdir / "samples.txt").write_text(sample + "\n")
    writers.print(f"\nvalidation loss {eval_loss:.4f} (perplexity {math.exp(eval_loss):.2f}) | unigram baseline "
                  f"{data.unigram_loss:.4f} | {log.tokens_per_s:,.0f} tok/s\n--- sample ---\n{sample}\n"
                  "--------------")
    writers.print(f"metrics: {workdir / 'metrics.jsonl'} | samples: {workdir / 'samples.txt'} | "
                  f"tensorboard --logdir={workdir / 'tensorboard'} | checkpoints: {ckpt.directory}")
    writers.close()
    return Result(log.losses, eval_loss, data.unigram_loss, sample, log.compile_s, log.tokens_per_s, start)


def _sample(run: Run) -> str:
    s, tok = run.cfg.sample, run.data.tokenizer
    new_ids = generate(run.state.model, run.state.params, tok.encode(s.prompt), s.max_new_tokens,
                       run.cfg.train.seq_len, s.temperature, s.seed)[0]
    return s.prompt + tok.decode(new_ids)
