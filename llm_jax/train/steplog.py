"""Per-step bookkeeping on the host: NaN/Inf and skipped-update checks, throughput, MFU, memory, the console.

The first step of an invocation includes compilation: it is logged as compile_s and kept out of throughput.
"""

import math
import statistics
import time

import jax
import ml_collections

from llm_jax.monitor.console import format_duration
from llm_jax.monitor.hardware import GIB
from llm_jax.monitor.system import device_memory_bytes, host_memory_bytes
from llm_jax.monitor.writers import Writers


class DivergedError(RuntimeError):
    """The loss became NaN or Inf."""


class StepLog:
    def __init__(self, cfg: ml_collections.ConfigDict, writers: Writers, start_step: int, skipped: int = 0,
                 flops_per_token: float = 0.0, peak_flops: float = 0.0):
        self.t, self.writers, self.start_step = cfg.train, writers, start_step
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.losses: list[float] = []
        self.begin = self.window_start = time.perf_counter()
        self.steady_start = self.begin
        self.compile_s, self.window_steps, self.tokens_per_s = 0.0, 0, 0.0
        self.window_wait_s, self.step_times = 0.0, []  # host time waiting for data; mean step time per window
        self.skipped = skipped  # skipped updates so far (a resumed run starts from its checkpoint's count)

    def data_wait(self, seconds: float) -> None:
        """Time the loop spent getting the next batch (not overlapped with device work)."""
        self.window_wait_s += seconds

    def exclude(self, seconds: float) -> None:
        """Time spent on evaluation, sampling or saving: kept out of the step time, throughput and ETA."""
        self.window_start += seconds
        self.steady_start += seconds

    @property
    def steady_step_s(self) -> float:
        """The median over the logging windows after compilation (nan before the first)."""
        return statistics.median(self.step_times) if self.step_times else math.nan

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

    def _throughput(self, now: float) -> dict[str, float]:
        t = self.t
        step_s = (now - self.window_start) / self.window_steps
        self.step_times.append(step_s)
        self.tokens_per_s = t.global_batch * t.seq_len / step_s
        out = {"tokens_per_s": self.tokens_per_s, "steps_per_s": 1 / step_s, "step_time_s": step_s,
               "data_wait_s": self.window_wait_s / self.window_steps}
        if self.peak_flops > 0:
            out["mfu"] = self.flops_per_token * self.tokens_per_s / self.peak_flops
        self.window_start, self.window_steps, self.window_wait_s = now, 0, 0.0
        return out

    def __call__(self, step: int, metrics: dict) -> None:
        """Metrics of the step with index `step`; records and messages count steps from 1."""
        t = self.t
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        self._check(step, metrics)
        self.losses.append(metrics["loss"])
        metrics["perplexity"] = math.exp(min(metrics["loss"], 700.0))
        now = time.perf_counter()
        if step == self.start_step:
            self.compile_s, self.window_start, self.steady_start = now - self.begin, now, now
            self.window_wait_s = 0.0
            self.writers.scalars(step + 1, {**metrics, "compile_s": self.compile_s})
            self.writers.print(f"step {step + 1}/{t.steps} | loss {metrics['loss']:.4f} | compile + first step "
                               f"{self.compile_s:.1f}s")
            return
        self.window_steps += 1
        done_since = step - self.start_step
        eta_s = (now - self.steady_start) / done_since * (t.steps - step - 1)
        if (step + 1) % t.log_every == 0 or step + 1 == t.steps:
            metrics.update(self._throughput(now))
            self.writers.scalars(step + 1, metrics)
            self.writers.scalars(step + 1, system_metrics(), prefix="system_")
            mfu = f" | MFU {metrics['mfu']:.1%}" if "mfu" in metrics else ""
            self.writers.print(f"step {step + 1}/{t.steps} | loss {metrics['loss']:.4f} | lr {metrics['lr']:.2e} | "
                               f"grad norm {metrics['grad_norm']:.3f} | {self.tokens_per_s:,.0f} tok/s{mfu} | "
                               f"ETA {format_duration(eta_s)}")
        average_tokens_per_s = t.global_batch * t.seq_len * done_since / max(now - self.steady_start, 1e-9)
        self.writers.progress(step + 1, t.steps, metrics["loss"], average_tokens_per_s, eta_s)


def system_metrics() -> dict[str, float]:
    out = {"host_memory_gib": host_memory_bytes() / GIB}
    out.update({k.replace("_bytes", "_gib"): v / GIB for k, v in device_memory_bytes().items()})
    return out
