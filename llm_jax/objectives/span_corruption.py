"""Span corruption (T5): drop random spans of each document, replace each by a sentinel in the encoder's input,
and have the decoder write the dropped spans back after their sentinels.

objective.noise_density of each document's tokens (floor; documents too short for one noise token stay whole)
in spans of mean length objective.mean_span. The encoder reads seq_len tokens; the decoder's length is the bound
`spans.target_length` guarantees for any packing. Sentinels are the tokenizer's own (T5's <extra_id_0>, ...) when
it has as many as a row can need, else ids after the tokenizer's; the decoder starts from `specials.decoder_start`.
"""

import math

import ml_collections
import numpy as np

from llm_jax.config.load import ConfigError
from llm_jax.data.tokenizer import DEFAULT_SPECIALS, Specials, Tokenizer
from llm_jax.objectives.base import Objective
from llm_jax.objectives.example import Example, ExampleSpec
from llm_jax.objectives.spans import corrupt_row, max_spans, target_length

# T5 reserves 100 sentinel ids: a change of noise density or row length then keeps the vocabulary (and so the
# model) the same, and a resumed run may change them.
MIN_SENTINELS = 100


class SpanCorruption(Objective):
    name = "span_corruption"

    def __init__(self, cfg: ml_collections.ConfigDict, tokenizer: Tokenizer):
        super().__init__(cfg, tokenizer)
        self.density, self.mean_span = cfg.objective.noise_density, cfg.objective.mean_span
        self.target_len = target_length(self.seq_len, self.density, self.mean_span)
        self.decoder_start = tokenizer.specials.decoder_start
        extra = self.extra_tokens(cfg, tokenizer.specials)
        own = tokenizer.specials.sentinels
        self.sentinel_ids = tuple(range(self.first_extra_id, self.first_extra_id + extra)) if extra else own

    @staticmethod
    def _needed(cfg: ml_collections.ConfigDict) -> int:
        """The most sentinels one row can need."""
        seq_len, density = cfg.train.seq_len, cfg.objective.noise_density
        if int(seq_len * density) < 1:  # no document could lose a token: nothing to predict
            raise ConfigError(f"span_corruption corrupts floor(train.seq_len x objective.noise_density) = "
                              f"floor({seq_len} x {density}) = 0 tokens of a row; raise train.seq_len to at least "
                              f"{math.ceil(1 / density)} or objective.noise_density")
        return max_spans(seq_len, density, cfg.objective.mean_span)

    @classmethod
    def extra_tokens(cls, cfg: ml_collections.ConfigDict, specials: Specials = DEFAULT_SPECIALS) -> int:
        needed = cls._needed(cfg)
        if len(specials.sentinels) >= needed:  # the tokenizer's own (T5's 100): the vocabulary stays
            return 0
        return max(MIN_SENTINELS, needed)

    def spec(self) -> ExampleSpec:
        L, T = self.seq_len, self.target_len
        ints = [(f"encoder_{n}", L, "int32") for n in ("inputs", "segment_ids", "positions")]
        ints += [(n, T, "int32") for n in ("decoder_inputs", "targets", "segment_ids", "positions")]
        return ExampleSpec((*ints, ("weights", T, "float32")))

    def example(self, row: dict[str, np.ndarray], rng: np.random.Generator) -> Example:
        return corrupt_row(row["tokens"], row["segment_ids"], rng, sentinel_ids=self.sentinel_ids,
                           density=self.density, mean_span=self.mean_span, target_len=self.target_len,
                           decoder_start=self.decoder_start)

    def scored(self, rows, most: int = 2000) -> np.ndarray:
        """The targets of (at most `most` of) the rows' examples, sentinels included: what the loss and accuracy
        count."""
        rng = np.random.default_rng(0)
        examples = [self.example({"tokens": t, "segment_ids": s}, rng)
                    for t, s in zip(rows["tokens"][:most], rows["segment_ids"][:most], strict=True)]
        return np.concatenate([e["targets"][e["weights"] > 0] for e in examples])
