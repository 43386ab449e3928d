"""The training loop: set up from a config, resume from the latest checkpoint, step, log, evaluate, save, sample.

The loop dispatches step N before it fetches step N-1's metrics, so the host never waits on the device except
to read numbers that are already computed (and at evaluations and checkpoints, which need the state anyway).
"""

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import sys
import time

import jax
import ml_collections

from llm_jax.checkpoint.manager import Checkpointer, CheckpointError, check_compatible
from llm_jax.checkpoint.params import abstract_like, load_params
from llm_jax.config.load import ConfigError
from llm_jax.models.layout import on_mesh
from llm_jax.monitor.flops import flops_per_token, peak_flops
from llm_jax.monitor.profile import Profiler
from llm_jax.monitor.record import run_record, write_run_record
from llm_jax.monitor.writers import Writers
from llm_jax.parallel.sharding import to_global
from llm_jax.train.hooks import Hooks, hooks_for
from llm_jax.train.preemption import StopRequest, agree_any
from llm_jax.train.resume import ResumePoint, choose, restore, shown
from llm_jax.train.setup import Run, build_run, prepare
from llm_jax.train.steplog import DivergedError, StepLog
from llm_jax.train.watchdog import Watchdog

__all__ = ["DivergedError", "Result", "train"]


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
    eval_metrics: dict = dataclasses.field(default_factory=dict)  # the final evaluation: loss, perplexity, bpb
    steady_step_s: float = math.nan  # median step time after compilation


def run_meta(run: Run) -> dict:
    return {"config": json.loads(run.cfg.to_json_best_effort()), "tokenizer": run.data.tokenizer.identity(),
            "mesh": dict(run.mesh.shape)}


def check_writable(workdir: pathlib.Path) -> None:
    """A workdir that cannot be written is an error before set-up, not after compilation. Directories made to
    find out are removed again: a run refused later for bad input leaves nothing behind."""
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"--workdir {workdir} is a file, not a directory; give a directory (new or a run's)")
    made = [d for d in (*reversed(workdir.absolute().parents), workdir.absolute()) if not d.exists()]
    probe = workdir / f".write-test-{os.getpid()}"
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--workdir {workdir}: cannot write to {e.filename or workdir} ({e.strerror or e}); "
                          "choose a writable --workdir or fix its permissions") from None
    finally:
        for d in reversed(made):
            if d.is_dir():
                d.rmdir()


def init_from(run: Run, path: str) -> int | None:
    """Start from another run's parameters (checkpoint or exported file) with a fresh optimizer state; return the
    step they were saved at, if known."""
    params, source = load_params(path, abstract_like(run.state.params, run.state_sharding.params))
    check_compatible(source, run.data.tokenizer.identity(), pathlib.Path(path))
    opt_state = jax.jit(run.state.tx.init, out_shardings=run.state_sharding.opt_state)(params)
    run.state = run.state.replace(params=params, opt_state=opt_state)
    return source["step"]


def _steps(run: Run, hooks: Hooks, ckpt: Checkpointer, writers: Writers, log: StepLog, start: int,
           stop: StopRequest, profiler: Profiler, watchdog: Watchdog) -> int:
    """Run the steps from `start` on, evaluating, sampling and saving as configured; return the last step done (less
    than train.steps when a stop was requested: then a checkpoint of that step has been written)."""
    t, state, pending = run.cfg.train, run.state, None
    for step in range(start, t.steps):
        done = step + 1
        profiler.before(done)
        waited = time.perf_counter()
        batch = to_global(next(run.data.train), run.batch_sharding)
        log.data_wait(time.perf_counter() - waited)
        state, metrics = run.jit_train(state, batch)
        if profiler.after(done, (state, metrics)):
            writers.print(f"profile of steps {profiler.first}-{profiler.last} written to {profiler.logdir} "
                          "(TensorBoard's profile tab)")
        if pending is not None:
            log(*pending)
            watchdog.beat(f"step {step}")
        pending = (step, metrics)
        evaluate_now = t.eval_every and done % t.eval_every == 0 and done < t.steps
        sample_now = run.cfg.sample.every_steps and done % run.cfg.sample.every_steps == 0 and done < t.steps
        stopping, minutes_due, save_failed = agree_any(stop.requested(), ckpt.minutes_due(), ckpt.poll_failed())
        if save_failed:  # every process stops; the one whose write failed says why
            raise ckpt.error or CheckpointError("another process failed to write its part of a checkpoint")
        save_now = ckpt.should_save(done) or minutes_due or done == t.steps or stopping
        if evaluate_now or save_now or sample_now:
            log(*pending)  # a checkpoint never holds a state whose loss was not checked
            pending, paused = None, time.perf_counter()
            run.state = state
            if save_now:
                ckpt.save(done, state, run.data.train.get_state(), run_meta(run))
                for hook in hooks.on_save:
                    hook(run, done)
            if stopping:
                return done
            if evaluate_now:
                evaluation(run, hooks, writers, done)
            if sample_now:
                writers.text(done, "samples", hooks.sample(run))
            log.exclude(time.perf_counter() - paused)
            watchdog.beat(f"step {done}")
    if pending is not None:
        log(*pending)
    run.state = state
    return t.steps


def evaluation(run: Run, hooks: Hooks, writers: Writers, step: int) -> dict[str, float]:
    metrics = run.evaluate(run.state.params)
    for hook in hooks.evaluate:
        metrics.update(hook(run))
    writers.scalars(step, metrics, prefix="eval_")
    writers.print(f"eval at step {step}: loss {metrics['loss']:.4f} | perplexity {metrics['perplexity']:.2f} | "
                  f"{metrics['bpb']:.4f} bits per byte | accuracy {metrics['accuracy']:.2%}")
    return metrics


def _start(run: Run, workdir: pathlib.Path, point: ResumePoint, ckpt: Checkpointer,
           initial: int | None) -> tuple[Writers, float]:
    """The run's files (record, config, hparams) and the opening lines; returns the writers and the peak FLOP/s."""
    cfg, mesh, data, t, start = run.cfg, run.mesh, run.data, run.cfg.train, point.step
    writers = Writers(workdir, resume_step=start, progress_bar=cfg.monitor.progress == "auto")
    if writers.archived:
        writers.print(f"{workdir} held an earlier run: moved its files to {writers.archived}")
    config = json.loads(cfg.to_json_best_effort())
    if writers.enabled:  # the tokenizer's identity too: resuming or evaluating with another one is an error
        (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2) + "\n")
        (workdir / "tokenizer.json").write_text(json.dumps(data.tokenizer.identity(), indent=2) + "\n")
        record = run_record(config, dict(mesh.shape), sys.argv)
        if start:  # what this start changed, next to the config it ran with
            record.update(resumed_from=start, config_changes=point.changes)
        write_run_record(workdir, record)
    writers.hparams(config, {"num_params": run.num_params})
    if not start and cfg.checkpoint.init_from:
        writers.print(f"parameters from {cfg.checkpoint.init_from}" + (f" (step {initial})" if initial else "")
                      + "; optimizer state and step start fresh")
    if start:
        writers.print(f"resumed from {ckpt.directory / str(start)}: step {start}, "
                      f"{data.train.examples:,} examples read")
        if point.changes:
            writers.print(f"config changes since that checkpoint: {shown(point.changes)}")
    peak, peak_source = peak_flops(mesh.devices.flat, cfg.model.dtype, cfg.monitor.peak_tflops)
    writers.print(f"devices: {mesh.size} x {mesh.devices.flat[0].device_kind} | mesh {dict(mesh.shape)} | "
                  f"model preset '{cfg.model_preset}' | parameters: {run.num_params / 1e6:.2f}M | MFU against "
                  f"{peak / 1e12:.3g} TFLOP/s ({peak_source})")
    if cfg.data.corpus != "shakespeare":
        mix = f" | mixture weights {[round(w, 3) for w in data.weights]}" if len(data.weights) > 1 else ""
        writers.print(f"data: {data.train.num_rows:,} train rows, {data.eval.num_rows:,} validation rows{mix} | "
                      f"{data.stats.summary()}")
    writers.print(f"tokenizer: {data.tokenizer.kind} ({data.tokenizer.vocab_size} tokens) | tokens per step: "
                  f"{t.global_batch * t.seq_len:,} | objective {run.objective.name} | unigram baseline loss: "
                  f"{data.unigram_loss:.4f}, accuracy {data.unigram_accuracy:.2%}")
    return writers, peak


def _checkpointer(workdir: pathlib.Path, cfg: ml_collections.ConfigDict, cleanup: contextlib.ExitStack) -> Checkpointer:
    ckpt = Checkpointer(workdir, cfg.checkpoint)
    cleanup.callback(ckpt.close)
    cleanup.callback(ckpt.wait)
    return ckpt


def _set_up(cfg: ml_collections.ConfigDict, workdir: pathlib.Path, devices: list | None,
            cleanup: contextlib.ExitStack) -> tuple[Run, Checkpointer, ResumePoint, int | None]:
    """Checks first (workdir, config, the checkpoint to resume and its config), then the run, then the restore or
    the parameters of checkpoint.init_from (and the step they were saved at). What needs closing is pushed on
    `cleanup`."""
    check_writable(workdir)
    prepared = prepare(cfg, devices)
    point, ckpt = ResumePoint(0, {}), None
    if (workdir / "checkpoints").is_dir():  # else nothing to resume, and nothing is written before the data checks
        ckpt = _checkpointer(workdir, prepared.cfg, cleanup)
        say = print if jax.process_index() == 0 else lambda _: None
        point = choose(ckpt, json.loads(prepared.cfg.to_json_best_effort()), prepared.tokenizer.identity(), say)
    run = build_run(cfg, devices, prepared)
    cleanup.callback(run.data.train.close)
    initial = None
    if not point.step and prepared.cfg.checkpoint.init_from:  # before anything is written to the workdir
        try:
            initial = init_from(run, prepared.cfg.checkpoint.init_from)
        except CheckpointError as e:
            raise ConfigError(f"checkpoint.init_from: {e}") from None
    ckpt = ckpt or _checkpointer(workdir, prepared.cfg, cleanup)
    if point.step:
        run.state, data_state = restore(ckpt, point, run.state, run.state_sharding)
        run.data.train.set_state(data_state)
    return run, ckpt, point, initial


def train(cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path, devices: list | None = None) -> Result:
    """Train as `cfg` says on `devices` (default: all), resuming from the workdir's latest checkpoint if any."""
    workdir = pathlib.Path(workdir)
    with contextlib.ExitStack() as cleanup:
        stop = StopRequest()  # from the start: a signal during set-up stops the run before its first step
        cleanup.callback(stop.restore)
        run, ckpt, point, initial = _set_up(cfg, workdir, devices, cleanup)
        cfg, mesh, data, t, start = run.cfg, run.mesh, run.data, run.cfg.train, point.step
        if agree_any(stop.requested())[0]:
            print(f"stopped by signal {stop.signal} during set-up, before step {start + 1}: nothing new to save; run "
                  "the same command again to " + ("resume" if start else "start"))
            return Result([], math.nan, data.unigram_loss, "", math.nan, math.nan, start, stopped_at=start)
        writers, peak = _start(run, workdir, point, ckpt, initial)
        log = StepLog(cfg, writers, start, int(jax.device_get(run.state.guard["skipped"])),
                      flops_per_token(cfg.model, t.seq_len, run.objective.target_len), peak)
        profiler = Profiler(cfg.profile, workdir / "tensorboard", enabled=jax.process_index() == 0)
        watchdog = cleanup.enter_context(contextlib.closing(Watchdog(cfg.runtime.step_timeout_s)))
        with on_mesh(mesh, run.rules):
            hooks = hooks_for(run)
            last = _steps(run, hooks, ckpt, writers, log, start, stop, profiler, watchdog)
            profiler.stop(run.state)
            if last < t.steps:
                ckpt.wait()
                why = f"by signal {stop.signal}" if stop.requested() else "because another process got a signal"
                writers.print(f"stopped {why} after step {last}: checkpoint "
                              f"{ckpt.directory / str(last)} written; run the same command again to resume")
                writers.close()
                return Result(log.losses, math.nan, data.unigram_loss, "", log.compile_s, log.tokens_per_s, start,
                              stopped_at=last, steady_step_s=log.steady_step_s)
            final = evaluation(run, hooks, writers, t.steps)
            sample = hooks.sample(run)
    writers.text(t.steps, "samples", sample)
    writers.end_hparams()
    if writers.enabled:
        (workdir / "samples.txt").write_text(sample + "\n")
    writers.print(f"\nvalidation loss {final['loss']:.4f} (perplexity {final['perplexity']:.2f}, {final['bpb']:.4f} "
                  f"bits per byte, accuracy {final['accuracy']:.2%}) | unigram baseline {data.unigram_loss:.4f} "
                  f"(accuracy {data.unigram_accuracy:.2%}) | {log.tokens_per_s:,.0f} tok/s | "
                  f"compile {log.compile_s:.1f}s, then {log.steady_step_s * 1e3:.1f} ms per step\n--- sample ---\n"
                  f"{sample}\n--------------")
    writers.print(f"metrics: {workdir / 'metrics.jsonl'} | samples: {workdir / 'samples.txt'} | log: "
                  f"{workdir / 'train.log'} | tensorboard: {pathlib.Path(sys.executable).parent / 'tensorboard'} "
                  f"--logdir={workdir} --host=127.0.0.1 | checkpoints: "
                  f"{ckpt.directory}")
    writers.close()
    return Result(log.losses, final["loss"], data.unigram_loss, sample, log.compile_s, log.tokens_per_s, start,
                  eval_metrics=final, steady_step_s=log.steady_step_s)
