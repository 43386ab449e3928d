"""Causal language modelling (GPT): predict every token from the ones before it in its document.

A row holds seq_len + 1 tokens: the model reads the first seq_len and predicts the last seq_len. A target counts
only if it belongs to the same document as the token before it and is not padding.
"""

import numpy as np

from llm_jax.data.packing import Rows
from llm_jax.objectives.base import Objective
from llm_jax.objectives.example import Example, ExampleSpec, positions, token_fields


def next_token_weights(segment_ids_L: np.ndarray) -> np.ndarray:
    """[L - 1] 1.0 where token i + 1 continues the document of token i, else 0 (a new document, padding)."""
    seg = segment_ids_L
    return ((seg[1:] == seg[:-1]) & (seg[1:] != 0)).astype(np.float32)


class CausalLM(Objective):
    name = "causal_lm"

    def row_len(self) -> int:
        return self.seq_len + 1

    def spec(self) -> ExampleSpec:
        return ExampleSpec(token_fields(self.seq_len))

    def example(self, row: dict[str, np.ndarray], rng: np.random.Generator) -> Example:
        tokens_L, seg_L = row["tokens"], row["segment_ids"]
        return {"inputs": tokens_L[:-1], "targets": tokens_L[1:], "segment_ids": seg_L[:-1],
                "positions": positions(seg_L)[:-1], "weights": next_token_weights(seg_L)}

    def scored(self, rows: Rows) -> np.ndarray:
        seg = rows["segment_ids"]
        return rows["tokens"][:, 1:][(seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0)]
