"""Where metrics go: metrics.jsonl (one object per logged step or evaluation), TensorBoard, and the console.

Only process 0 writes; the others get writers that do nothing, so callers never branch on the process index.
"""

import json
import pathlib
import sys
import time

import jax


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Writers:
    def __init__(self, workdir: pathlib.Path, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.workdir = workdir
        self._jsonl = self._tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter  # imported lazily: only process 0 writes events

            workdir.mkdir(parents=True, exist_ok=True)
            self._jsonl = (workdir / "metrics.jsonl").open("a", buffering=1)
            self._tb = SummaryWriter(str(workdir / "tensorboard"))

    def scalars(self, step: int, metrics: dict[str, float], prefix: str = "") -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **{prefix + k: v for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        for k, v in metrics.items():
            self._tb.add_scalar(prefix.rstrip("_") + "/" + k if prefix else "train/" + k, v, step)

    def text(self, step: int, tag: str, text: str) -> None:
        if self.enabled:
            self._tb.add_text(tag, text, step)

    def print(self, line: str) -> None:
        if self.enabled:
            print(line, file=sys.stdout, flush=True)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
