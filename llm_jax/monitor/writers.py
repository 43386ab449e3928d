"""Where metrics go: metrics.jsonl (one object per logged step or evaluation), TensorBoard, and the console.

Only process 0 writes; the others get writers that do nothing, so callers never branch on the process index.
"""

import json
import math
import pathlib
import shutil
import sys
import time

import jax


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


RUN_FILES = ("metrics.jsonl", "samples.txt", "config.json", "tokenizer.json", "tensorboard")


def archive_previous_run(workdir: pathlib.Path) -> pathlib.Path | None:
    """A fresh run in a used workdir moves the old run's files to previous_runs/N instead of mixing or losing them."""
    present = [workdir / f for f in RUN_FILES if (workdir / f).exists()]
    if not present:
        return None
    n = 1
    while (workdir / "previous_runs" / str(n)).exists():
        n += 1
    dest = workdir / "previous_runs" / str(n)
    dest.mkdir(parents=True)
    for path in present:
        shutil.move(str(path), str(dest / path.name))
    return dest


def drop_records_after(path: pathlib.Path, step: int) -> None:
    """Keep the metrics of steps up to `step`: those after it will be logged again by the resumed run."""
    if path.exists():
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(line for line in lines if json.loads(line).get("step", 0) <= step))


class Writers:
    def __init__(self, workdir: pathlib.Path, enabled: bool | None = None, resume_step: int = 0):
        """`resume_step` > 0: continue the run in `workdir` from that step, dropping anything logged after it."""
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.workdir = workdir
        self._jsonl = self._tb = None
        self.archived = None
        if self.enabled:
            from tensorboardX import SummaryWriter  # imported lazily: only process 0 writes events

            if resume_step:
                drop_records_after(workdir / "metrics.jsonl", resume_step)
            else:
                self.archived = archive_previous_run(workdir)
            workdir.mkdir(parents=True, exist_ok=True)
            self._jsonl = (workdir / "metrics.jsonl").open("a", buffering=1)
            # purge_step: TensorBoard hides what an interrupted run logged after the checkpoint it resumes from.
            self._tb = SummaryWriter(str(workdir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def scalars(self, step: int, metrics: dict[str, float], prefix: str = "") -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **{prefix + k: v for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        for k, v in metrics.items():
            if not math.isfinite(v):  # a skipped NaN step: kept in metrics.jsonl, left out of the plots
                continue
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
