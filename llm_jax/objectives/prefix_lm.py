"""Prefix language modelling: each document is cut at a random point; the prefix is read with bidirectional
attention and not scored, the rest is predicted causally (T5's and UL2's "prefix LM" objective).

Rows as for causal LM (seq_len + 1 tokens). Each document piece of n >= 2 tokens gets a prefix of 1..n-1 tokens,
uniformly; the example's `prefix` marks them (the decoder lets every query of the document see those keys).
"""

import numpy as np

from llm_jax.objectives.causal_lm import CausalLM, next_token_weights
from llm_jax.objectives.example import Example, ExampleSpec, positions, token_fields


def prefix_marks(segment_ids_L: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[L] 1 for the tokens in their document's prefix (padding never)."""
    pos_L = positions(segment_ids_L)
    starts = np.flatnonzero(pos_L == 0)
    ends = np.append(starts[1:], len(segment_ids_L))
    cut_L = np.zeros(len(segment_ids_L), np.int32)
    for s, e in zip(starts, ends, strict=True):
        n = e - s
        cut_L[s:e] = rng.integers(1, n) if n >= 2 else n
    return ((pos_L < cut_L) & (segment_ids_L != 0)).astype(np.int32)


class PrefixLM(CausalLM):
    name = "prefix_lm"

    def spec(self) -> ExampleSpec:
        return ExampleSpec(token_fields(self.seq_len, "prefix"))

    def example(self, row: dict[str, np.ndarray], rng: np.random.Generator) -> Example:
        example = super().example(row, rng)
        prefix_L = prefix_marks(row["segment_ids"], rng)
        # Token i + 1 is scored only after the prefix; the prefix is context, read both ways.
        weights_L = (next_token_weights(row["segment_ids"]) * (1 - prefix_L[1:])).astype(np.float32)
        return {**example, "prefix": prefix_L[:-1], "weights": weights_L}
