"""The grain loader: batches as a pure function of (seed, example index), split across processes, resumable from
one number whatever the worker count, and mixtures of sources in their configured proportions."""

import numpy as np
import pytest

from llm_jax.data.loader import Loader, MemoryRows, eval_stream, train_stream

N, ROW_LEN = 21, 5  # 21 rows: not a multiple of the batch, so batches straddle epochs


def _rows(n=N, first=0):
    """Row i is identified by tokens[i, 0] // ROW_LEN (+ first)."""
    tokens = (np.arange(n * ROW_LEN, dtype=np.int32) + first * ROW_LEN).reshape(n, ROW_LEN)
    return {"tokens": tokens, "segment_ids": np.ones_like(tokens)}


def _loader(global_batch=4, seed=0, shuffle=True, sources=None, weights=None, **kwargs):
    sources = sources or [MemoryRows(_rows())]
    stream = (train_stream(sources, weights or [1.0] * len(sources), seed) if shuffle else eval_stream(sources))
    return Loader(stream, global_batch, sum(len(s) for s in sources), **kwargs)


def _ids(batch):
    return batch["tokens"][:, 0] // ROW_LEN


def _equal(a, b) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _take(loader, n):
    try:
        return [next(loader) for _ in range(n)]
    finally:
        loader.close()


def test_batches_are_whole_rows():
    """Without an objective's transform the loader hands out rows as stored (test_objectives checks examples)."""
    rows = _rows()
    batch = _loader().batch_at(3)
    assert set(batch) == {"tokens", "segment_ids"}
    assert batch["tokens"].shape == (4, ROW_LEN) and batch["tokens"].dtype == np.int32
    for i, r in enumerate(_ids(batch)):
        np.testing.assert_array_equal(batch["tokens"][i], rows["tokens"][r])
        np.testing.assert_array_equal(batch["segment_ids"][i], rows["segment_ids"][r])


def test_deterministic_per_seed():
    a, b, c = (_loader(seed=s).batch_at for s in (1, 1, 2))
    assert all(_equal(a(s), b(s)) for s in range(10))
    assert not all(_equal(a(s), c(s)) for s in range(10))


def test_iteration_equals_random_access_and_counts_examples():
    loader = _loader(seed=3)
    iterated = _take(loader, 12)
    assert loader.get_state() == {"examples": 48}
    fresh = _loader(seed=3)
    for step in [11, 0, 7, 5, 11, 3]:
        assert _equal(fresh.batch_at(step), iterated[step])


@pytest.mark.parametrize("workers_before, workers_after", [(0, 2), (2, 1)])
def test_resume_gives_the_same_batches_with_another_worker_count(workers_before, workers_after):
    uninterrupted = _take(_loader(seed=4), 13)
    first = _loader(seed=4, workers=workers_before)
    _take(first, 7)
    resumed = _loader(seed=4, workers=workers_after)
    resumed.set_state(first.get_state())
    got = _take(resumed, 6)
    assert all(_equal(x, y) for x, y in zip(uninterrupted[7:], got, strict=True))
    assert resumed.get_state() == {"examples": 13 * 4}


def test_resume_after_the_global_batch_changes_continues_at_the_next_example():
    """The state counts examples, not steps, so a restore with another global batch neither repeats nor skips."""
    stream = np.concatenate([_ids(b) for b in _take(_loader(global_batch=2, seed=5), 12)])
    loader = _loader(global_batch=4, seed=5)
    loader.set_state({"examples": 8})
    np.testing.assert_array_equal(np.concatenate([_ids(b) for b in _take(loader, 4)]), stream[8:24])


@pytest.mark.parametrize("shuffle", [True, False])
def test_processes_split_the_global_batch(shuffle):
    whole = _loader(6, seed=5, shuffle=shuffle)
    parts = [_loader(6, seed=5, shuffle=shuffle, process_index=p, process_count=2) for p in range(2)]
    for step in range(8):
        full, halves = whole.batch_at(step), [p.batch_at(step) for p in parts]
        assert all(len(h["tokens"]) == 3 for h in halves)
        for k in full:
            np.testing.assert_array_equal(np.concatenate([halves[0][k], halves[1][k]]), full[k])


def test_uneven_process_split_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        _loader(5, process_index=0, process_count=2)


def test_every_row_once_per_epoch_and_a_fresh_shuffle_each_epoch():
    loader = _loader(seed=6)
    stream = np.concatenate([_ids(loader.batch_at(s)) for s in range(3 * N // 4 + 2)])
    epochs = [stream[e * N:(e + 1) * N] for e in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(N))
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[0], np.arange(N))


def test_eval_stream_is_in_order_and_repeatable():
    first = [_loader(seed=7, shuffle=False).batch_at(s) for s in range(3)]
    again = [_loader(seed=8, shuffle=False).batch_at(s) for s in range(3)]
    assert all(_equal(x, y) for x, y in zip(first, again, strict=True))
    np.testing.assert_array_equal(np.concatenate([_ids(b) for b in first]), np.arange(12))


def test_mixture_follows_the_weights():
    a, b = MemoryRows(_rows(50)), MemoryRows(_rows(30, first=1000))
    loader = _loader(10, seed=9, sources=[a, b], weights=[0.8, 0.2])
    ids = np.concatenate([_ids(loader.batch_at(s)) for s in range(200)])
    share_b = (ids >= 1000).mean()
    assert abs(share_b - 0.2) < 0.02, share_b
    # Within a source, every row comes up once per (source) epoch.
    from_a = ids[ids < 1000][:100]
    assert sorted(from_a[:50]) == list(range(50)) and sorted(from_a[50:]) == list(range(50))
    other = _loader(10, seed=9, sources=[a, b], weights=[0.5, 0.5])
    assert abs((np.concatenate([_ids(other.batch_at(s)) for s in range(200)]) >= 1000).mean() - 0.5) < 0.02
