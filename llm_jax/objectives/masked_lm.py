"""Masked language modelling (BERT): predict a random 15% of the tokens from the whole document around them.

Of the chosen tokens 80% become [MASK], 10% a random token and 10% stay (objective.mask_rate, mask_token_frac,
random_token_frac); <pad>, <bos> and <eos> (BERT's [CLS] and [SEP]) are never chosen. With objective.whole_word a
word's pieces are chosen together (SentencePiece tokenizers). [MASK] is the first id after the tokenizer's.
"""

import ml_collections
import numpy as np

from llm_jax.config.load import ConfigError
from llm_jax.data.tokenizer import SPECIAL_TOKENS, Tokenizer
from llm_jax.objectives.base import Objective
from llm_jax.objectives.example import Example, ExampleSpec, positions, token_fields
from llm_jax.objectives.masking import mask_row, word_start_table


class MaskedLM(Objective):
    name = "masked_lm"

    def __init__(self, cfg: ml_collections.ConfigDict, tokenizer: Tokenizer):
        super().__init__(cfg, tokenizer)
        o = cfg.objective
        if o.mask_token_frac + o.random_token_frac > 1:
            raise ConfigError(f"objective.mask_token_frac={o.mask_token_frac} + objective.random_token_frac="
                              f"{o.random_token_frac} is above 1; they are fractions of the chosen tokens")
        self.rate, self.mask_frac, self.random_frac = o.mask_rate, o.mask_token_frac, o.random_token_frac
        self.mask_id, self.random_hi = tokenizer.vocab_size, tokenizer.vocab_size
        self.never_mask = tokenizer.specials.ids
        self.word_start_V = None
        if o.whole_word:
            try:
                self.word_start_V = word_start_table(tokenizer)
            except ValueError as e:
                raise ConfigError(f"objective.whole_word: {e}") from None

    @classmethod
    def extra_tokens(cls, cfg: ml_collections.ConfigDict) -> int:
        return 1  # [MASK]

    def spec(self) -> ExampleSpec:
        return ExampleSpec(token_fields(self.seq_len))

    def example(self, row: dict[str, np.ndarray], rng: np.random.Generator) -> Example:
        tokens_L, seg_L = row["tokens"], row["segment_ids"]
        masked = mask_row(tokens_L, seg_L, rng, mask_id=self.mask_id, random_lo=len(SPECIAL_TOKENS),
                          random_hi=self.random_hi, never_mask=self.never_mask, rate=self.rate,
                          mask_frac=self.mask_frac, random_frac=self.random_frac, word_start_V=self.word_start_V)
        return {**masked, "segment_ids": seg_L, "positions": positions(seg_L)}

    def scored(self, rows) -> np.ndarray:
        tokens = rows["tokens"][rows["segment_ids"] != 0]
        return tokens[tokens >= len(SPECIAL_TOKENS)]
