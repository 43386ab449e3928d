"""Packing documents into rows: every strategy keeps every token once, restarts positions at each document, and
never lets one row's segment id cover two documents."""

import numpy as np
import pytest

from llm_jax.data.packing import STRATEGIES, pack_documents, positions_from_segments
from llm_jax.data.tokenizer import BOS_ID, EOS_ID, PAD_ID


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




def _segments(rows):
    """Every (row, segment) piece's tokens, and a check of its positions."""
    pieces = []
    for t, s, p in zip(rows["tokens"], rows["segment_ids"], rows["positions"], strict=True):
        ids = s[s != 0]
        assert list(np.unique(ids)) == list(range(1, ids.max(initial=0) + 1)), "segment ids must count 1, 2, ..."
        assert (np.diff(s[s != 0]) >= 0).all() and (s[len(ids):] == 0).all(), "padding only at the row end"
        assert (t[s == 0] == PAD_ID).all()
        for seg in range(1, ids.max(initial=0) + 1):
            np.testing.assert_array_equal(p[s == seg], np.arange((s == seg).sum()))
            pieces.append(tuple(t[s == seg]))
    return pieces


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("lengths, row_len", [([5, 0, 17, 3, 40, 1, 9], 8), ([100], 9), ([1, 30, 7, 7, 12], 33)])
def test_every_strategy_keeps_every_token_once(strategy, lengths, row_len):
    docs = _docs(lengths, seed=len(lengths))
    rows = pack_documents(docs, row_len, strategy)
    pieces = _segments(rows)
    marked = [np.concatenate([[BOS_ID], d, [EOS_ID]]) for d in docs]
    # Over all rows, the tokens are exactly those of the documents (with their markers): none lost or repeated.
    np.testing.assert_array_equal(np.sort(np.concatenate([np.array(p) for p in pieces])),
                                  np.sort(np.concatenate(marked)))
    if strategy != "concat":  # a piece is a row-sized cut of one document, never two documents
        expected = sorted(tuple(m[i:i + row_len]) for m in marked for i in range(0, len(m), row_len))
        assert sorted(pieces) == expected
    if strategy == "pad":
        assert len(rows["tokens"]) == sum(-(-len(m) // row_len) for m in marked)


def test_best_fit_fills_rows_better_than_padding():
    docs = _docs(np.random.default_rng(0).integers(1, 60, size=400), seed=1)
    fill = {s: (pack_documents(docs, 64, s)["segment_ids"] != 0).mean() for s in ("best_fit", "pad")}
    assert fill["best_fit"] > 0.9 and fill["best_fit"] > fill["pad"] + 0.3, fill


def test_positions_from_segments():
    seg = np.array([[1, 1, 2, 2, 2, 0], [1, 2, 3, 3, 0, 0]])
    np.testing.assert_array_equal(positions_from_segments(seg), [[0, 1, 0, 1, 2, 0], [0, 0, 0, 1, 0, 1]])


def test_unknown_strategy_is_an_error():
    with pytest.raises(ValueError, match=r"data\.packing"):
        pack_documents(_docs([3]), 8, "first_fit")
