"""Read and tokenize documents in grain worker processes, one unit (a file, or a block of documents) at a time.

Files are the unit of parallelism: with `data.workers` > 0 each worker reads and tokenizes whole files, loading
the tokenizer lazily on first use (a SentencePiece processor does not pickle). Results come back in input order,
so the documents' order, and everything derived from it (the validation hold-out, packing), does not depend on
the number of workers. Errors in a worker reach the caller as the same DataError, message and all.
"""

import collections
from collections.abc import Sequence

import grain
import numpy as np
from etils import epath
from grain import MapDataset

from llm_jax.data.loader import with_workers
from llm_jax.data.sources import SourceOptions, SourceStats, expand, read_file
from llm_jax.data.tokenizer import Tokenizer

DOCS_PER_UNIT = 64  # documents given in memory are tokenized in blocks of this many

Unit = str | tuple[str, ...]  # a file path, or documents' text


class EncodeUnit(grain.transforms.Map):
    def __init__(self, tokenizer: Tokenizer, opts: SourceOptions):
        self.tokenizer, self.opts = tokenizer, opts

    def map(self, unit: Unit) -> tuple[list[np.ndarray], dict]:
        stats = SourceStats()
        docs = read_file(epath.Path(unit), self.opts, stats) if isinstance(unit, str) else unit
        return [self.tokenizer.encode(doc) for doc in docs], dict(stats.counts)


def file_units(patterns: str) -> list[Unit]:
    return [str(p) for p in expand(patterns)]


def text_units(docs: Sequence[str]) -> list[Unit]:
    return [tuple(docs[i:i + DOCS_PER_UNIT]) for i in range(0, len(docs), DOCS_PER_UNIT)]


def encode_units(units: list[Unit], tokenizer: Tokenizer, opts: SourceOptions, stats: SourceStats,
                 workers: int = 0) -> list[np.ndarray]:
    """The token ids of every document of every unit, in order; problems are counted into `stats`."""
    ds = MapDataset.source(units).map(EncodeUnit(tokenizer, opts))
    if workers:
        it = iter(with_workers(ds.to_iter_dataset(), workers))
        try:
            results = list(it)
        finally:
            it.close()
    else:
        results = [ds[i] for i in range(len(ds))]
    docs: list[np.ndarray] = []
    for tokens, counts in results:
        docs += tokens
        stats.counts.update(collections.Counter(counts))
    return docs
