"""Masked language modelling (BERT): predict a random 15% of the tokens from the whole document around them.

Of the chosen tokens 80% become [MASK], 10% a random token and 10% stay (objective.mask_rate, mask_token_frac,
random_token_frac); special ids (<pad>, <bos>, <eos>: BERT's [CLS] and [SEP]; [MASK], sentinels, other special added
tokens) are never chosen nor drawn as the random token. With objective.whole_word a word's pieces are chosen together
(SentencePiece tokenizers). [MASK] is the tokenizer's own (BERT's) or else the first id after the tokenizer's.
"""

import ml_collections
import numpy as np

from llm_jax.config.load import ConfigError
from llm_jax.data.tokenizer import DEFAULT_SPECIALS, Specials, Tokenizer
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
        specials = tokenizer.specials
        self.mask_id = self.first_extra_id if specials.mask is None else specials.mask
        self.never_mask = tuple(sorted({*specials.reserved, self.mask_id}))
        # Random replacements are text ids: every id of the tokenizer but the special ones, wherever they are.
        self.random_ids = np.setdiff1d(np.arange(tokenizer.vocab_size, dtype=np.int32), self.never_mask)
        self.word_start_V = None
        if o.whole_word:
            try:
                self.word_start_V = word_start_table(tokenizer)
            except ValueError as e:
                raise ConfigError(f"objective.whole_word: {e}") from None

    @classmethod
    def extra_tokens(cls, cfg: ml_collections.ConfigDict, specials: Specials = DEFAULT_SPECIALS) -> int:
        return 1 if specials.mask is None else 0  # [MASK]

    def spec(self) -> ExampleSpec:
        return ExampleSpec(token_fields(self.seq_len))

    def example(self, row: dict[str, np.ndarray], rng: np.random.Generator) -> Example:
        tokens_L, seg_L = row["tokens"], row["segment_ids"]
        masked = mask_row(tokens_L, seg_L, rng, mask_id=self.mask_id, random_ids=self.random_ids,
                          never_mask=self.never_mask, rate=self.rate,
                          mask_frac=self.mask_frac, random_frac=self.random_frac, word_start_V=self.word_start_V)
        return {**masked, "segment_ids": seg_L, "positions": positions(seg_L)}

    def scored(self, rows) -> np.ndarray:
        tokens = rows["tokens"][rows["segment_ids"] != 0]
        return tokens[~np.isin(tokens, self.never_mask)]
