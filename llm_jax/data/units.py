"""The parallel, resumable half of preparation: each unit of input (a file, or a block of in-memory documents) is
tokenized on its own, by any worker, into `work/tokens-NNNNN.arrayrecord` (one record per document, int32 ids)
with a summary beside it. The packing pass then reads the units back in input order, so the shards do not
depend on how many workers there were or in which order they finished.

A unit whose summary exists, whose input is unchanged (path, size, modification time) and whose tokens file
matches the summary's SHA-256 is not tokenized again: an interrupted preparation resumes where it stopped.
"""

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import pathlib
from collections.abc import Iterator

import numpy as np
from etils import epath

from llm_jax.data.sources import SourceOptions, SourceStats, read_file
from llm_jax.data.tokenizer import Tokenizer, make_tokenizer

WORK = "work"  # under the output directory; removed once meta.json is written
READ_BATCH = 256  # records read back at a time


@dataclasses.dataclass(frozen=True)
class Job:
    index: int
    unit: str | tuple[str, ...]  # a file path, or documents' text
    work: str  # the work directory
    tokenizer: tuple[str, str]  # data.tokenizer, data.tokenizer_path
    tokenizer_hash: str  # its identity: a changed tokenizer file at the same path tokenizes again
    opts: SourceOptions

    @property
    def settings(self) -> dict:
        return {"tokenizer": self.tokenizer_hash, "source_options": dataclasses.asdict(self.opts)}

    @property
    def stem(self) -> str:
        return str(pathlib.Path(self.work) / f"tokens-{self.index:05d}")


def _identity(unit: str | tuple[str, ...]) -> dict:
    if isinstance(unit, str):
        info = epath.Path(unit).stat()
        return {"path": unit, "size": info.length, "mtime": info.mtime}
    return {"documents_sha256": hashlib.sha256("\0".join(unit).encode()).hexdigest()}


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def done(job: Job) -> dict | None:
    """The unit's summary when its tokens are already there, whole and made from this input."""
    summary_path = pathlib.Path(job.stem + ".json")
    if not summary_path.is_file():
        return None
    try:
        summary = json.loads(summary_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if summary.get("input") != _identity(job.unit) or summary.get("settings") != job.settings:
        return None
    tokens = job.stem + ".arrayrecord"
    return summary if os.path.isfile(tokens) and _sha256(tokens) == summary.get("sha256") else None


@functools.cache
def _tokenizer(kind: str, path: str) -> Tokenizer:  # one per worker process
    return make_tokenizer(kind, path)


def tokenize(job: Job) -> dict:
    """Tokenize one unit into its tokens file (temporary name, renamed when whole), then write its summary."""
    from array_record.python.array_record_module import ArrayRecordWriter

    previous = done(job)
    if previous is not None:
        return previous
    tokenizer, stats = _tokenizer(*job.tokenizer), SourceStats()
    docs = read_file(epath.Path(job.unit), job.opts, stats) if isinstance(job.unit, str) else job.unit
    tmp, final = job.stem + ".arrayrecord.tmp", job.stem + ".arrayrecord"
    writer, count, tokens = ArrayRecordWriter(tmp, "group_size:256"), 0, 0
    for doc in docs:
        ids = np.asarray(tokenizer.encode(doc), np.int32)
        writer.write(ids.tobytes())
        count, tokens = count + 1, tokens + len(ids)
    writer.close()
    os.replace(tmp, final)
    summary = {"input": _identity(job.unit), "settings": job.settings, "documents": count,
               "tokens": tokens, "stats": dict(stats.counts), "sha256": _sha256(final)}
    pathlib.Path(job.stem + ".json.tmp").write_text(json.dumps(summary))
    os.replace(job.stem + ".json.tmp", job.stem + ".json")
    return summary


def run(jobs: list[Job], workers: int) -> list[dict]:
    """Every job's summary, in job order; with `workers` > 0 in that many processes of their own."""
    if not workers:
        return [tokenize(job) for job in jobs]
    # spawn, not fork: the parent may have started JAX's threads, which a forked child would inherit half-way
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(tokenize, jobs))


def documents(job: Job) -> Iterator[np.ndarray]:
    """The unit's documents' token ids, read back in order."""
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(job.stem + ".arrayrecord")
    try:
        n = reader.num_records()
        for start in range(0, n, READ_BATCH):
            for record in reader.read(list(range(start, min(start + READ_BATCH, n)))):
                yield np.frombuffer(record, np.int32)
    finally:
        reader.close()
