"""Tokenizer, corpus, packing and the random-access batch loader."""

import numpy as np
import pytest

from llm_jax.data import corpus
from llm_jax.data.loader import BatchLoader, pack_documents
from llm_jax.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, ByteTokenizer, make_tokenizer

# ---------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("text", ["", "ROMEO:\nO, she doth teach the torches!", "naïve café — ünïcödé ✓ 日本語 🎭"])
def test_byte_tokenizer_round_trips_utf8(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids.dtype == np.int32
    assert len(ids) == len(text.encode("utf-8"))
    assert (ids >= tok.offset).all() and (ids < tok.vocab_size).all()
    assert tok.decode(ids) == text


def test_byte_tokenizer_skips_special_tokens_when_decoding():
    tok = make_tokenizer("byte")
    ids = tok.encode("héllo")
    assert tok.decode(np.concatenate([[BOS_ID], ids, [EOS_ID, PAD_ID, PAD_ID]])) == "héllo"
    assert tok.vocab_size == 259
    assert {PAD_ID, BOS_ID, EOS_ID} == {0, 1, 2}


def test_byte_tokenizer_does_not_decode_padded_vocab_ids_as_bytes():
    """The model's vocab is padded past the tokenizer's 259 ids (to 320); a sampled id in that padding is not a
    byte, so it must not come out as some other character."""
    tok = ByteTokenizer()
    text = tok.decode(np.concatenate([tok.encode("a"), [tok.vocab_size, 300, 319]]))
    assert text.replace("\ufffd", "") == "a", repr(text)


# ---------------------------------------------------------------- corpus


@pytest.fixture(scope="module")
def docs():
    return {split: corpus.documents(split) for split in ("train", "validation")}


def test_train_and_validation_plays_are_disjoint_and_nonempty():
    train, val = corpus.split_plays("train"), corpus.split_plays("validation")
    assert train and val
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(corpus.play_files())
    assert len(train) > len(val)


def test_corpus_documents(docs):
    train, val = docs["train"], docs["validation"]
    assert len(train) > 0 and len(val) > 0
    assert all(d.strip() for d in train + val)
    assert not set(train) & set(val)
    for d in train + val:
        assert "**" not in d, d[:200]
        assert "### " not in d, d[:200]
        assert not d.lstrip().startswith("#"), d[:200]
    # Speaker lines are converted from **NAME** to NAME:
    assert any("\nROMEO:\n" in d for d in train + val)


def test_corpus_is_deterministic(docs):
    assert corpus.documents("validation") == docs["validation"]


def test_unknown_split_is_an_error():
    with pytest.raises(ValueError, match="split"):
        corpus.split_plays("test")


# ---------------------------------------------------------------- packing


def _docs(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 259, size=n).astype(np.int32) for n in lengths]


def _check_packing(docs_tokens, row_len):
    rows = pack_documents(docs_tokens, row_len)
    tokens, seg, pos = rows["tokens"], rows["segment_ids"], rows["positions"]
    n_stream = sum(len(d) + 2 for d in docs_tokens)
    assert tokens.shape == seg.shape == pos.shape == (-(-n_stream // row_len), row_len)
    for a in (tokens, seg, pos):
        assert a.dtype == np.int32

    # No token lost, none added: the unpadded tokens are exactly <bos> doc <eos> for every doc, in order.
    expected = np.concatenate([np.concatenate([[BOS_ID], d, [EOS_ID]]) for d in docs_tokens])
    np.testing.assert_array_equal(tokens[seg != 0], expected)
    # Padding: segment 0, PAD tokens, only at the end of the last row.
    assert (tokens[seg == 0] == PAD_ID).all()
    flat_seg = seg.reshape(-1)
    assert (flat_seg[:n_stream] != 0).all() and (flat_seg[n_stream:] == 0).all()

    for r in range(len(tokens)):
        s, p, t = seg[r], pos[r], tokens[r]
        real = s != 0
        # Segment ids restart at 1 in each row and count up by one at each new document.
        assert s[0] == 1
        assert set(np.diff(s[real])) <= {0, 1}
        # Positions restart at 0 at the row start and at each document start, and count up inside a document.
        starts = np.concatenate([[True], s[1:] != s[:-1]])
        assert (p[starts & real] == 0).all()
        assert (p[1:][~starts[1:] & real[1:]] == p[:-1][~starts[1:] & real[1:]] + 1).all()
        # A document starting inside a row starts with <bos>; a document ends with <eos> unless the row cuts it.
        assert (t[1:][starts[1:] & real[1:]] == BOS_ID).all()
        ends = np.concatenate([s[:-1] != s[1:], [False]]) & real
        assert (t[ends] == EOS_ID).all()
    return rows


def test_pack_documents_small_example():
    rows = pack_documents([np.array([10, 11, 12]), np.array([20]), np.array([30, 31])], row_len=4)
    np.testing.assert_array_equal(rows["tokens"], [[1, 10, 11, 12], [2, 1, 20, 2], [1, 30, 31, 2]])
    np.testing.assert_array_equal(rows["segment_ids"], [[1, 1, 1, 1], [1, 2, 2, 2], [1, 1, 1, 1]])
    np.testing.assert_array_equal(rows["positions"], [[0, 1, 2, 3], [0, 0, 1, 2], [0, 1, 2, 3]])


def test_pack_documents_pads_the_last_row():
    rows = pack_documents([np.array([10, 11]), np.array([20])], row_len=5)
    np.testing.assert_array_equal(rows["tokens"], [[1, 10, 11, 2, 1], [20, 2, 0, 0, 0]])
    np.testing.assert_array_equal(rows["segment_ids"], [[1, 1, 1, 1, 2], [1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(rows["positions"], [[0, 1, 2, 3, 0], [0, 1, 0, 1, 2]])


@pytest.mark.parametrize("lengths, row_len", [
    ([5, 0, 17, 3, 40, 1, 9], 8),
    ([100], 9),
    ([2, 2, 2, 2], 4),
    ([1, 30, 7, 7, 12], 33),
])
def test_pack_documents_invariants(lengths, row_len):
    _check_packing(_docs(lengths, seed=len(lengths)), row_len)


def test_pack_documents_needs_documents():
    with pytest.raises(ValueError):
        pack_documents([], 8)


# ---------------------------------------------------------------- loader


@pytest.fixture
def rows():
    """21 rows (not a multiple of the batch, so batches straddle epochs); row i is identified by tokens[i, 0]."""
    n, row_len = 21, 5
    tokens = np.arange(n * row_len, dtype=np.int32).reshape(n, row_len)
    return {"tokens": tokens, "segment_ids": np.ones_like(tokens), "positions": np.tile(np.arange(row_len), (n, 1))}


def _ids(batch):
    return batch["tokens"][:, 0] // batch["tokens"].shape[1]


def _equal(a, b) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_loader_batches_are_whole_rows(rows):
    batch = BatchLoader(rows, 4, seed=0, shuffle=True).batch_at(3)
    assert set(batch) == {"tokens", "segment_ids", "positions"}
    assert batch["tokens"].shape == (4, 5)
    for i, r in enumerate(_ids(batch)):
        for k in rows:
            np.testing.assert_array_equal(batch[k][i], rows[k][r])


def test_loader_is_deterministic_per_seed(rows):
    a = [BatchLoader(rows, 4, seed=1, shuffle=True).batch_at(s) for s in range(10)]
    b = [BatchLoader(rows, 4, seed=1, shuffle=True).batch_at(s) for s in range(10)]
    c = [BatchLoader(rows, 4, seed=2, shuffle=True).batch_at(s) for s in range(10)]
    assert all(_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(_equal(x, y) for x, y in zip(a, c, strict=True))


def test_batch_at_equals_iteration(rows):
    loader = BatchLoader(rows, 4, seed=3, shuffle=True)
    it = iter(loader)
    iterated = [next(it) for _ in range(12)]
    fresh = BatchLoader(rows, 4, seed=3, shuffle=True)
    # Random access in any order gives the same batches.
    for step in [11, 0, 7, 5, 11, 3]:
        assert _equal(fresh.batch_at(step), iterated[step])
    assert loader.get_state() == {"step": 12}


def test_get_state_set_state_resumes(rows):
    loader = BatchLoader(rows, 4, seed=4, shuffle=True)
    it = iter(loader)
    for _ in range(7):
        next(it)
    state = loader.get_state()
    expected = [next(it) for _ in range(6)]

    resumed = BatchLoader(rows, 4, seed=4, shuffle=True)
    resumed.set_state(dict(state))
    it2 = iter(resumed)
    got = [next(it2) for _ in range(6)]
    assert all(_equal(x, y) for x, y in zip(expected, got, strict=True))
    assert resumed.get_state() == loader.get_state() == {"step": 13}


@pytest.mark.parametrize("shuffle", [True, False])
def test_processes_split_the_global_batch(rows, shuffle):
    whole = BatchLoader(rows, 6, seed=5, shuffle=shuffle)
    parts = [BatchLoader(rows, 6, seed=5, shuffle=shuffle, process_index=p, process_count=2) for p in range(2)]
    for step in range(8):
        full = whole.batch_at(step)
        halves = [p.batch_at(step) for p in parts]
        assert all(len(h["tokens"]) == 3 for h in halves)
        for k in full:
            np.testing.assert_array_equal(np.concatenate([halves[0][k], halves[1][k]]), full[k])
        if not shuffle or step * 6 % 21 <= 15:  # a shuffled batch that straddles two epochs may repeat a row
            assert not set(_ids(halves[0])) & set(_ids(halves[1]))


def test_uneven_process_split_is_rejected(rows):
    with pytest.raises(ValueError):
        BatchLoader(rows, 5, seed=0, shuffle=True, process_index=0, process_count=2)


def test_every_row_once_per_epoch(rows):
    n, gb = 21, 4
    loader = BatchLoader(rows, gb, seed=6, shuffle=True)
    steps = 3 * n // gb + 2  # a little over three epochs, with batches that straddle epoch boundaries
    stream = np.concatenate([_ids(loader.batch_at(s)) for s in range(steps)])
    epochs = [stream[e * n:(e + 1) * n] for e in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(n))
    # Each epoch is a fresh shuffle, and shuffled at all.
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[0], np.arange(n))


def test_eval_loader_is_in_order_and_repeatable(rows):
    loader = BatchLoader(rows, 4, seed=7, shuffle=False)
    first = [loader.batch_at(s) for s in range(3)]
    again = [loader.batch_at(s) for s in range(3)]
    other_seed = [BatchLoader(rows, 4, seed=8, shuffle=False).batch_at(s) for s in range(3)]
    assert all(_equal(x, y) for x, y in zip(first, again, strict=True))
    assert all(_equal(x, y) for x, y in zip(first, other_seed, strict=True))
    np.testing.assert_array_equal(np.concatenate([_ids(b) for b in first]), np.arange(12))
