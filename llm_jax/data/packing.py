"""Packing tokenized documents into fixed-length rows.

Every document becomes <bos> tokens <eos> (the tokenizer's ids for them). A row holds `row_len` tokens (seq_len + 1
for causal LM: the model reads the first seq_len, the loss predicts the last seq_len) with `segment_ids` (1, 2, ...
per document piece inside the row, 0 for padding) and `positions` (restarting at 0 where a piece starts), so
attention never crosses documents.

Strategies (`data.packing`):
  concat    documents end to end, cut every row_len tokens: no padding, but documents straddle rows.
  best_fit  documents longer than a row are cut into row-sized pieces; pieces are placed, longest first, into the
            row with the least room that still fits them (within windows of documents), so few are cut.
  pad       one piece per row, padded: simplest, most padding.
"""

import bisect
from collections.abc import Sequence

import numpy as np

from llm_jax.data.tokenizer import DEFAULT_SPECIALS, Specials

STRATEGIES = ("concat", "best_fit", "pad")
BEST_FIT_WINDOW = 8192  # documents packed together; bounds memory and time on large corpora

Rows = dict[str, np.ndarray]  # tokens, segment_ids, positions: int32 [rows, row_len]


def positions_from_segments(segment_ids: np.ndarray) -> np.ndarray:
    """Position of each token within its piece: counts from 0 where the segment id changes (and at row starts)."""
    n_rows, row_len = segment_ids.shape
    idx = np.broadcast_to(np.arange(row_len), (n_rows, row_len))
    starts = np.concatenate([np.ones((n_rows, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    return (idx - np.maximum.accumulate(np.where(starts, idx, 0), axis=1)).astype(np.int32)


def marked(doc_tokens: np.ndarray, specials: Specials) -> np.ndarray:
    """<bos> tokens <eos>."""
    return np.concatenate([[specials.bos], np.asarray(doc_tokens, np.int32), [specials.eos]]).astype(np.int32)


def _with_markers(docs_tokens: Sequence[np.ndarray], specials: Specials) -> list[np.ndarray]:
    if not len(docs_tokens):
        raise ValueError("no documents to pack")
    return [marked(t, specials) for t in docs_tokens]


def cut_rows(stream: np.ndarray, doc_of: np.ndarray, row_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """A token stream and each token's document number as rows of `row_len` (the last one padded) and their
    segment ids. Only differences of document numbers count, so a stream may start at any document."""
    n_rows = -(-len(stream) // row_len)
    pad = n_rows * row_len - len(stream)
    tokens = np.pad(stream, (0, pad), constant_values=pad_id).reshape(n_rows, row_len)
    doc_of = np.pad(doc_of, (0, pad), constant_values=-1).reshape(n_rows, row_len)
    segment_ids = (doc_of - doc_of[:, :1] + 1).astype(np.int32)  # documents 1, 2, ... inside each row
    segment_ids[doc_of < 0] = 0
    return tokens, segment_ids


def _concat(docs: list[np.ndarray], row_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    return cut_rows(np.concatenate(docs), np.repeat(np.arange(len(docs)), [len(d) for d in docs]), row_len, pad_id)


def _pieces(docs: list[np.ndarray], row_len: int) -> list[np.ndarray]:
    return [d[i:i + row_len] for d in docs for i in range(0, len(d), row_len)]


def _assemble(bins: list[list[np.ndarray]], row_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.full((len(bins), row_len), pad_id, np.int32)
    segment_ids = np.zeros((len(bins), row_len), np.int32)
    for r, pieces in enumerate(bins):
        at = 0
        for s, piece in enumerate(pieces, 1):
            tokens[r, at:at + len(piece)] = piece
            segment_ids[r, at:at + len(piece)] = s
            at += len(piece)
    return tokens, segment_ids


def _best_fit(pieces: list[np.ndarray], row_len: int) -> list[list[np.ndarray]]:
    bins: list[list[np.ndarray]] = []
    room: list[tuple[int, int]] = []  # sorted (free space, bin index) of bins that still have room
    for piece in sorted(pieces, key=len, reverse=True):
        i = bisect.bisect_left(room, (len(piece), -1))
        if i == len(room):
            bins.append([piece])
            free, b = row_len - len(piece), len(bins) - 1
        else:
            free, b = room.pop(i)
            bins[b].append(piece)
            free -= len(piece)
        if free:
            bisect.insort(room, (free, b))
    return bins


def pack_documents(docs_tokens: Sequence[np.ndarray], row_len: int, strategy: str = "concat",
                   specials: Specials = DEFAULT_SPECIALS) -> Rows:
    """All documents as rows of `row_len` tokens, by `strategy` (see the module docstring), marked and padded
    with the tokenizer's `specials`."""
    docs, pad = _with_markers(docs_tokens, specials), specials.pad
    if strategy == "concat":
        tokens, segment_ids = _concat(docs, row_len, pad)
    elif strategy == "pad":
        tokens, segment_ids = _assemble([[p] for p in _pieces(docs, row_len)], row_len, pad)
    elif strategy == "best_fit":
        parts = [_assemble(_best_fit(_pieces(docs[i:i + BEST_FIT_WINDOW], row_len), row_len), row_len, pad)
                 for i in range(0, len(docs), BEST_FIT_WINDOW)]
        tokens, segment_ids = (np.concatenate(x) for x in zip(*parts, strict=True))
    else:
        raise ValueError(f"unknown packing '{strategy}' in data.packing; choose: {', '.join(STRATEGIES)}")
    return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions_from_segments(segment_ids)}
