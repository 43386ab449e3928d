"""Packed batches by random access: batch `step` is a pure function of (seed, step), so the whole data state is
one step counter that any number of hosts or workers can resume from.

Documents are tokenized as <bos> text <eos>, concatenated, and cut into rows of seq_len + 1 tokens (the model
reads the first seq_len, the loss predicts the last seq_len). Each row carries `segment_ids` (1, 2, ... per
document inside the row; 0 is padding) and `positions` (restarting at 0 where a document starts), so attention
never crosses documents and a document split across rows starts again at position 0.
"""

from collections.abc import Iterator, Sequence

import numpy as np

from llm_jax.data.tokenizer import BOS_ID, EOS_ID, PAD_ID

Batch = dict[str, np.ndarray]  # tokens, segment_ids, positions: int32 [batch, seq_len + 1]


def pack_documents(docs_tokens: Sequence[np.ndarray], row_len: int) -> Batch:
    """All documents as rows of `row_len` tokens; the last partial row is padded with segment id 0."""
    pieces, doc_ids = [], []
    for i, toks in enumerate(docs_tokens):
        pieces.append(np.concatenate([[BOS_ID], np.asarray(toks, np.int32), [EOS_ID]]).astype(np.int32))
        doc_ids.append(np.full(len(pieces[-1]), i, np.int64))
    if not pieces:
        raise ValueError("no documents to pack")
    stream, doc_of = np.concatenate(pieces), np.concatenate(doc_ids)
    n_rows = -(-len(stream) // row_len)
    pad = n_rows * row_len - len(stream)
    tokens = np.pad(stream, (0, pad), constant_values=PAD_ID).reshape(n_rows, row_len)
    doc_of = np.pad(doc_of, (0, pad), constant_values=-1).reshape(n_rows, row_len)

    # Number documents 1, 2, ... inside each row; padding (-1) becomes segment 0.
    segment_ids = (doc_of - doc_of[:, :1] + 1).astype(np.int32)
    segment_ids[doc_of < 0] = 0
    idx = np.broadcast_to(np.arange(row_len), (n_rows, row_len))
    starts = np.concatenate([np.ones((n_rows, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    positions = (idx - np.maximum.accumulate(np.where(starts, idx, 0), axis=1)).astype(np.int32)
    return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions}


class BatchLoader:
    """Host-local batches: process `p` of `n` gets rows [p*b, (p+1)*b) of every global batch, b = batch / n.

    Training batches walk a fresh permutation of all rows each epoch (a pure function of seed and epoch);
    evaluation batches (`shuffle=False`) read the rows in order, so every evaluation sees the same data.
    """

    def __init__(self, rows: Batch, global_batch: int, seed: int, shuffle: bool,
                 process_index: int = 0, process_count: int = 1):
        if global_batch % process_count:
            raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
        self.rows, self.global_batch, self.seed, self.shuffle = rows, global_batch, seed, shuffle
        self.num_rows = len(rows["tokens"])
        self.local_batch = global_batch // process_count
        self.first = process_index * self.local_batch
        self.step = 0
        self._perm_epoch, self._perm = -1, np.arange(self.num_rows)

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return self._perm
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
            self._perm_epoch = epoch
        return self._perm

    def batch_at(self, step: int) -> Batch:
        examples = step * self.global_batch + self.first + np.arange(self.local_batch)
        epochs, within = np.divmod(examples, self.num_rows)
        rows = np.empty(self.local_batch, np.int64)
        for epoch in np.unique(epochs):
            rows[epochs == epoch] = self._order(int(epoch))[within[epochs == epoch]]
        return {k: v[rows] for k, v in self.rows.items()}

    def __iter__(self) -> Iterator[Batch]:
        while True:
            batch = self.batch_at(self.step)
            self.step += 1
            yield batch

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state: dict) -> None:
        self.step = int(state["step"])
