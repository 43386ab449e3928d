"""Host-local batches from a grain pipeline, resumable from one number.

The training stream is a pure function of (seed, global example index): rows are shuffled afresh each epoch (a
seeded index permutation, no buffer), several sources are mixed by fixed weights, and global batch k is examples
[k*B, (k+1)*B). Process p of n reads only its slice [k*B + p*b, k*B + (p+1)*b), b = B/n. So the whole data state is
the number of examples consumed: a restore rebuilds the pipeline from that index, whatever the number of hosts or
worker processes was before or is now.
"""

import functools
import os
import threading
import time
from collections.abc import Sequence

import grain
import numpy as np
from grain import IterDataset, MapDataset

from llm_jax.data.packing import Rows

Batch = dict[str, np.ndarray]  # a stack of examples (objectives/example.py): [local_batch, ...] each


def compact_dtype(*rows: Rows) -> np.dtype:
    """uint16 when every token id and segment id fits: half the memory, disk and inter-process traffic."""
    largest = max(max(int(r["tokens"].max(initial=0)), int(r["segment_ids"].max(initial=0))) for r in rows)
    return np.dtype(np.uint16 if largest < 2**16 else np.int32)


def stacked(rows: Rows, dtype: np.dtype) -> np.ndarray:
    """[rows, 2, row_len]: each row's tokens, then its segment ids (positions are derived from them)."""
    return np.stack([rows["tokens"], rows["segment_ids"]], axis=1).astype(dtype)


def with_workers(ds: IterDataset, workers: int) -> IterDataset:
    """`ds` computed in `workers` grain processes (none: in this process)."""
    if not workers:
        return ds
    mark_flags_parsed()
    return ds.mp_prefetch(grain.multiprocessing.MultiprocessingOptions(num_workers=workers),
                          worker_init_fn=functools.partial(exit_with_parent, os.getpid()))


def exit_with_parent(parent: int, worker_index: int = 0, worker_count: int = 1) -> None:
    """Run in each grain worker: end it as soon as `parent` (the process that started it) is gone, even killed by
    SIGKILL, so an orphaned worker does not keep its memory, nor multiprocessing's resource tracker, alive."""
    # Polled, not PR_SET_PDEATHSIG: grain starts workers from its own short-lived threads, and the death signal
    # fires when the starting *thread* exits, which would kill a healthy worker.
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.25)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class MemoryRows:
    """Packed rows held in memory (tokens and segment ids); a grain random-access source."""

    def __init__(self, rows: Rows):
        self.data = stacked(rows, compact_dtype(rows))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        return {"tokens": self.data[i, 0].astype(np.int32), "segment_ids": self.data[i, 1].astype(np.int32)}


def train_stream(sources: Sequence, weights: Sequence[float], seed: int, to_example=None) -> MapDataset:
    """An endless stream of examples: each source's rows shuffled per epoch with its own seed, mixed by `weights`,
    then made examples by `to_example` (a grain RandomMap) with a generator seeded from (seed, global index)."""
    streams = [MapDataset.source(s).shuffle(seed=(seed * 1000 + i) % 2**32).repeat() for i, s in enumerate(sources)]
    rows = streams[0] if len(streams) == 1 else MapDataset.mix(streams, list(weights))
    return rows if to_example is None else rows.random_map(to_example, seed=seed)


def eval_stream(sources: Sequence, seed: int = 0, to_example=None) -> MapDataset:
    """Every validation row of every source in order, wrapping around, made examples as in training: each
    evaluation reads the same examples (the same masks and spans, too)."""
    ds = [MapDataset.source(s) for s in sources]
    rows = (ds[0] if len(ds) == 1 else MapDataset.concatenate(ds)).repeat()
    return rows if to_example is None else rows.random_map(to_example, seed=seed)


def mark_flags_parsed() -> None:
    """grain's worker processes read absl flags; our CLI parses its own, so tell absl there is nothing to parse."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class Loader:
    """Iterates host-local batches of `stream` from `examples` on; `batch_at(k)` reads global batch k directly."""

    def __init__(self, stream: MapDataset, global_batch: int, num_rows: int, process_index: int = 0,
                 process_count: int = 1, workers: int = 0, threads: int = 2, prefetch: int = 8):
        if global_batch % process_count:
            raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
        self.stream, self.global_batch, self.num_rows = stream, global_batch, num_rows
        self.local_batch = global_batch // process_count
        self.process_index, self.process_count = process_index, process_count
        self.workers, self.threads, self.prefetch = workers, threads, prefetch
        self.examples = 0  # global examples consumed so far: the whole data state
        self._iterator = None

    def _batches(self, start: int) -> MapDataset:
        local = self.stream[start:].batch(self.local_batch, drop_remainder=True)
        return local[self.process_index::self.process_count]

    def batch_at(self, step: int) -> Batch:
        return self._batches(0)[step]

    def __iter__(self) -> "Loader":
        return self

    def __next__(self) -> Batch:
        if self._iterator is None:
            ds = self._batches(self.examples).to_iter_dataset(
                grain.ReadOptions(num_threads=self.threads, prefetch_buffer_size=self.prefetch))
            self._iterator = iter(with_workers(ds, self.workers))
        batch = next(self._iterator)
        self.examples += self.global_batch
        return batch

    def get_state(self) -> dict:
        return {"examples": self.examples}

    def set_state(self, state: dict) -> None:
        self.close()
        self.examples = int(state["examples"])

    def close(self) -> None:
        """Stop prefetching (and the worker processes, if any)."""
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None
