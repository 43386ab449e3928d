"""What an objective is: packed rows -> examples (a grain transform) and the loss on them.

An objective states the row length it needs from the packer, its example's arrays (`spec`), how a row becomes an
example (`example`, deterministic in the generator grain seeds from (seed, example index), so exact resume holds
with any number of workers or hosts), which tokens a context-free baseline is scored on, and the extra token ids
it needs beyond the tokenizer's ([MASK], sentinels: none for those the tokenizer has). The loss is the weighted
cross-entropy of loss.py unless an objective says otherwise.
"""

from typing import ClassVar

import grain
import ml_collections
import numpy as np

from llm_jax.data.packing import Rows
from llm_jax.data.tokenizer import DEFAULT_SPECIALS, Specials, Tokenizer
from llm_jax.objectives.example import Example, ExampleSpec
from llm_jax.objectives.loss import example_loss


class Objective:
    name: ClassVar[str]
    target_len = 0  # the decoder's length, for encoder-decoder objectives
    sentinel_ids: tuple[int, ...] = ()  # what marks dropped text, for span corruption
    loss = staticmethod(example_loss)  # (logits, example, z_loss) -> (ce_sum, z_sum)

    def __init__(self, cfg: ml_collections.ConfigDict, tokenizer: Tokenizer):
        self.seq_len = cfg.train.seq_len
        self.first_extra_id = tokenizer.vocab_size  # extra ids ([MASK], sentinels) follow the tokenizer's

    @classmethod
    def extra_tokens(cls, cfg: ml_collections.ConfigDict, specials: Specials = DEFAULT_SPECIALS) -> int:
        """Token ids this objective adds after those of a tokenizer with these `specials` (the model's vocabulary
        grows by as many)."""
        return 0

    def row_len(self) -> int:
        """Tokens per packed row."""
        return self.seq_len

    def spec(self) -> ExampleSpec:
        raise NotImplementedError

    def example(self, row: dict[str, np.ndarray], rng: np.random.Generator) -> Example:
        """One packed row ({tokens, segment_ids}) -> one example of `spec()`."""
        raise NotImplementedError

    def scored(self, rows: Rows) -> np.ndarray:
        """The tokens of `rows` that this objective's targets are drawn from (for the unigram baseline): every
        document token by default."""
        return rows["tokens"][rows["segment_ids"] != 0]


class ToExample(grain.transforms.RandomMap):
    """The grain transform: rows -> examples by an objective, with grain's per-index random generator."""

    def __init__(self, objective: Objective):
        self.objective = objective

    def random_map(self, row: dict, rng: np.random.Generator) -> Example:
        return self.objective.example(row, rng)
