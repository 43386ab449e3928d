"""Where metrics go: metrics.jsonl (one object per logged step or evaluation), TensorBoard, and the console
(which also keeps train.log).

Only process 0 writes; the others get writers that do nothing, so callers never branch on the process index.
TensorBoard tags: train/* (the step's metrics and throughput), eval/*, system/* (memory), the resolved config as
hparams (the HParams tab compares runs by their eval metrics), and text samples.
"""

import json
import math
import os
import pathlib
import shutil
import time

import jax

from llm_jax.config.load import flatten
from llm_jax.monitor.console import Console

RUN_FILES = ("metrics.jsonl", "samples.txt", "config.json", "tokenizer.json", "tensorboard", "train.log", "run.json")
HPARAM_METRICS = ("eval/loss", "eval/perplexity", "eval/bpb")  # what the HParams tab shows per run
# TensorBoard's HParams tab sorts its columns by name and shows a handful: only what a researcher compares goes
# there. The whole config is in config.json and run.json.
HPARAM_SECTIONS = ("model", "optimizer", "train")
HPARAM_KEYS = ("data.corpus", "data.tokenizer", "data.packing", "model_preset")


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


def drop_records_after(path: pathlib.Path, step: int) -> list[str]:
    """Keep the metrics of steps up to `step`: those after it will be logged again by the resumed run.

    A line that does not decode (a kill or a full disk cut the last one short; garbage anywhere else) is dropped,
    wherever it is: its step is unknown, and jq, pandas and the reports need every line to parse. Returns one note
    per dropped line (Writers prints them and keeps them in train.log).
    The file is rewritten to a temporary file and swapped in with os.replace, so a kill mid-rewrite leaves either
    the old log or the new one, never a half-written one.
    """
    if not path.exists():
        return []
    lines = path.read_bytes().splitlines(keepends=True)
    kept, notes = [], []
    for i, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except ValueError:  # JSONDecodeError, and UnicodeDecodeError for a character cut in half
            record = None
        if not isinstance(record, dict):
            if line.strip():
                where = "its last line, cut off mid-write" if i == len(lines) else f"line {i}, which is not JSON"
                notes.append(f"{path}: dropped {where}: {line[:60]!r}")
            continue
        if record.get("step", 0) <= step:
            kept.append(line if line.endswith(b"\n") else line + b"\n")  # appends must start on a new line
    if kept == lines:
        return notes
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as f:
            f.write(b"".join(kept))
            f.flush()
            os.fsync(f.fileno())  # the new log is on disk before it takes the old one's place
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return notes


def flat_hparams(config: dict) -> dict[str, bool | int | float | str]:
    """A config as TensorBoard hparams: dotted keys, scalar values (lists and tuples as text)."""
    return {k: v if isinstance(v, bool | int | float | str) else json.dumps(v)
            for k, v in flatten(config).items() if v is not None}


def compared_hparams(config: dict, extra: dict) -> dict[str, bool | int | float | str]:
    """model.*, optimizer.*, train.* (in the config's order), a few data keys, then `extra` (e.g. num_params)."""
    flat = flat_hparams(config)
    kept = [k for s in HPARAM_SECTIONS for k in flat if k.startswith(s + ".")] + [k for k in HPARAM_KEYS if k in flat]
    return {**{k: flat[k] for k in kept}, **extra}


class Writers:
    def __init__(self, workdir: pathlib.Path, enabled: bool | None = None, resume_step: int = 0,
                 progress_bar: bool = True):
        """`resume_step` > 0: continue the run in `workdir` from that step, dropping anything logged after it.
        `progress_bar`: draw a live bar when stdout is a terminal (plain lines otherwise, always in train.log)."""
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.workdir = workdir
        self._jsonl = self._tb = None
        self.archived = None
        notes: list[str] = []
        if self.enabled:
            from tensorboardX import SummaryWriter  # imported lazily: only process 0 writes events

            if resume_step:
                notes = drop_records_after(workdir / "metrics.jsonl", resume_step)
            else:
                self.archived = archive_previous_run(workdir)
            workdir.mkdir(parents=True, exist_ok=True)
            self._jsonl = (workdir / "metrics.jsonl").open("a", buffering=1)
            # purge_step: TensorBoard hides what an interrupted run logged after the checkpoint it resumes from.
            self._tb = SummaryWriter(str(workdir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
        self.console = Console(workdir / "train.log" if self.enabled else None, enabled=self.enabled,
                               bar=progress_bar)
        for note in notes:
            self.console.line(note)

    def scalars(self, step: int, metrics: dict[str, float], prefix: str = "train_") -> None:
        """Recorded as `<prefix>key` in metrics.jsonl and as `<prefix without _>/key` in TensorBoard."""
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3),
                  **{("" if prefix == "train_" else prefix) + k: v for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        for k, v in metrics.items():
            if not math.isfinite(v):  # a skipped NaN step: kept in metrics.jsonl, left out of the plots
                continue
            self._tb.add_scalar(prefix.rstrip("_") + "/" + k, v, step)

    def text(self, step: int, tag: str, text: str) -> None:
        if self.enabled:
            # Markdown: two trailing spaces keep the sample's line breaks in TensorBoard's text tab.
            self._tb.add_text(tag, text.replace("\n", "  \n"), step)

    def hparams(self, config: dict, extra: dict | None = None) -> None:
        """The run's config as hparams, linked to the eval metrics so the HParams tab can compare runs."""
        if not self.enabled:
            return
        from tensorboardX.summary import hparams

        experiment, start, _ = hparams(compared_hparams(config, extra or {}), dict.fromkeys(HPARAM_METRICS, 0.0))
        for summary in (experiment, start):
            self._tb.file_writer.add_summary(summary)

    def end_hparams(self) -> None:
        """Mark the run's session finished (the HParams tab shows its status)."""
        if self.enabled:
            from tensorboardX.summary import hparams

            self._tb.file_writer.add_summary(hparams({}, {})[2])

    def print(self, line: str) -> None:
        self.console.line(line)

    def progress(self, step: int, total: int, loss: float, tokens_per_s: float, eta_s: float | None) -> None:
        self.console.progress(step, total, loss, tokens_per_s, eta_s)

    def close(self) -> None:
        self.console.close()
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
