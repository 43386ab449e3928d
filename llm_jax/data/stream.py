"""Preparation as a stream: documents flow from the files through the tokenizer and the packer into ArrayRecord
shards, so host memory is bounded by the settings (a packing window, one shard writer per split), not the corpus.

The rows are the ones `pack_documents` makes of the whole corpus at once: concat carries the unfinished row over
to the next documents, and best_fit and pad pack windows of BEST_FIT_WINDOW documents that start where they
would in one pass. A shard is written under a temporary name and renamed when whole, and meta.json, written
last, lists only renamed shards: a reader never sees half a shard.
"""

import dataclasses
import hashlib
import os
import pathlib
from collections.abc import Iterable, Iterator

import numpy as np

from llm_jax.data.loader import stacked
from llm_jax.data.packing import BEST_FIT_WINDOW, Rows, cut_rows, marked, pack_documents, positions_from_segments
from llm_jax.data.tokenizer import Specials

TMP_SUFFIX = ".tmp"


class StreamPacker:
    """Documents in, rows out, as `pack_documents(all documents, row_len, strategy)` would make them."""

    def __init__(self, row_len: int, strategy: str, specials: Specials):
        self.row_len, self.strategy, self.specials = row_len, strategy, specials
        self.window: list[np.ndarray] = []  # best_fit / pad: documents of the window being filled
        self.tail_tokens = np.zeros(0, np.int32)  # concat: tokens of the unfinished row, and their document ids
        self.tail_docs = np.zeros(0, np.int64)
        self.pending: list[np.ndarray] = []
        self.pending_len, self.docs_seen = 0, 0

    def add(self, doc_tokens: np.ndarray) -> Iterator[Rows]:
        if self.strategy != "concat":
            self.window.append(doc_tokens)
            if len(self.window) == BEST_FIT_WINDOW:
                yield self._window()
            return
        self.pending.append(marked(doc_tokens, self.specials))
        self.pending_len += len(self.pending[-1])
        if self.pending_len >= 64 * self.row_len:  # cut in batches of rows: numpy per row would be slow
            rows = self._concat(final=False)
            if rows is not None:
                yield rows

    def finish(self) -> Iterator[Rows]:
        if self.strategy != "concat":
            if self.window:
                yield self._window()
        elif self.pending or len(self.tail_tokens):
            rows = self._concat(final=True)
            if rows is not None:
                yield rows

    def _window(self) -> Rows:
        rows = pack_documents(self.window, self.row_len, self.strategy, self.specials)
        self.window = []
        return rows

    def _concat(self, final: bool) -> Rows | None:
        doc_ids = np.arange(self.docs_seen, self.docs_seen + len(self.pending))
        tokens = np.concatenate([self.tail_tokens, *self.pending])
        docs = np.concatenate([self.tail_docs, np.repeat(doc_ids, [len(p) for p in self.pending])])
        self.docs_seen += len(self.pending)
        self.pending, self.pending_len = [], 0
        # Whole rows now; the rest waits for the next documents, except at the end, where it is padded.
        whole = len(tokens) if final else len(tokens) // self.row_len * self.row_len
        self.tail_tokens, self.tail_docs = tokens[whole:], docs[whole:]
        if not whole:
            return None
        tokens, segment_ids = cut_rows(tokens[:whole], docs[:whole], self.row_len, self.specials.pad)
        return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions_from_segments(segment_ids)}


@dataclasses.dataclass
class Shard:
    name: str
    rows: int
    sha256: str


class ShardWriter:
    """Rows of one split into `prefix-NNNNN.arrayrecord` files of `rows_per_shard` rows each."""

    def __init__(self, out: pathlib.Path, prefix: str, dtype: np.dtype, rows_per_shard: int):
        self.out, self.prefix, self.dtype, self.rows_per_shard = out, prefix, dtype, rows_per_shard
        self.shards: list[Shard] = []
        self.writer, self.in_shard, self.digest = None, 0, None

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards) + self.in_shard

    def _name(self) -> str:
        return f"{self.prefix}-{len(self.shards):05d}.arrayrecord"

    def write(self, rows: Rows) -> None:
        from array_record.python.array_record_module import ArrayRecordWriter

        for row in stacked(rows, self.dtype):
            if self.writer is None:
                path = self.out / (self._name() + TMP_SUFFIX)
                self.writer = ArrayRecordWriter(str(path), "group_size:1")  # one row per chunk: random access
                self.digest = hashlib.sha256()
            record = row.tobytes()
            self.writer.write(record)
            self.digest.update(record)
            self.in_shard += 1
            if self.in_shard == self.rows_per_shard:
                self._seal()

    def _seal(self) -> None:
        self.writer.close()
        name = self._name()
        os.replace(self.out / (name + TMP_SUFFIX), self.out / name)  # whole, or not there under its name
        self.shards.append(Shard(name, self.in_shard, self.digest.hexdigest()))
        self.writer, self.in_shard = None, 0

    def close(self) -> list[Shard]:
        if self.writer is not None:
            self._seal()
        return self.shards


class Unigram:
    """Counts of the tokens an objective scores, for the unigram baseline, gathered chunk by chunk."""

    def __init__(self, size: int):
        self.counts = np.zeros(size, np.int64)

    def add(self, tokens: np.ndarray) -> None:
        if len(tokens) and int(tokens.max()) >= len(self.counts):
            self.counts = np.pad(self.counts, (0, int(tokens.max()) + 1 - len(self.counts)))
        self.counts += np.bincount(tokens, minlength=len(self.counts))


def baseline(train: Unigram, validation: Unigram) -> tuple[float, float]:
    """As pipeline.unigram_baseline: the add-one unigram loss of the validation targets, and the accuracy of
    always guessing the most frequent training target."""
    size = max(len(train.counts), len(validation.counts))
    counts = np.pad(train.counts, (0, size - len(train.counts))).astype(np.float64) + 1.0
    held = np.pad(validation.counts, (0, size - len(validation.counts)))
    n = max(int(held.sum()), 1)
    return float(-(held * np.log(counts / counts.sum())).sum() / n), float(held[np.argmax(counts)] / n)


def drain(docs: Iterable[np.ndarray], packer: StreamPacker) -> Iterator[Rows]:
    for doc in docs:
        yield from packer.add(doc)
    yield from packer.finish()
