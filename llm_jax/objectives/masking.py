"""BERT-style masked LM on one packed row: choose tokens, corrupt them 80/10/10, predict the originals.

Only tokens inside documents (segment id != 0) that are not special ids can be chosen. Like the original BERT, a
row gets a fixed count, round(rate * eligible), rather than an independent coin per token, so every row carries
the same share of loss. With `word_start_V` the choice is made per whole word (whole-word masking): predicting
"##ing" from an unmasked "walk" is too easy a task to learn much from.
"""

from collections.abc import Sequence

import numpy as np

from llm_jax.data.tokenizer import ByteTokenizer, SentencePieceTokenizer

WORD_PREFIX = "\u2581"  # SentencePiece marks a preceding space with this character


def word_start_table(tokenizer: ByteTokenizer | SentencePieceTokenizer) -> np.ndarray:
    """bool[vocab]: does this id begin a word? A piece begins one if it starts with '▁' (it follows a space) or
    other whitespace (the newline piece, so that a word never runs across lines), or is a control or unknown piece."""
    if not isinstance(tokenizer, SentencePieceTokenizer):
        raise ValueError("whole-word masking needs a sentencepiece tokenizer (data.tokenizer=sentencepiece): "
                         f"a {tokenizer.kind} tokenizer has no word boundaries; turn whole-word masking off")
    sp = tokenizer.sp
    starts_V = np.zeros(tokenizer.vocab_size, bool)
    for i in range(tokenizer.vocab_size):
        piece = sp.id_to_piece(i)
        starts_V[i] = piece[:1] == WORD_PREFIX or piece[:1].isspace() or sp.is_control(i) or sp.is_unknown(i)
    return starts_V


def _mask_count(n_eligible: int, rate: float) -> int:
    return max(1, round(rate * n_eligible)) if n_eligible else 0


def _choose_tokens(eligible_L: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(np.flatnonzero(eligible_L), size=count, replace=False))


def _choose_words(tokens_L: np.ndarray, segment_ids_L: np.ndarray, eligible_L: np.ndarray, count: int,
                  word_start_V: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # A word also starts after anything that cannot be part of one (a special id, padding, another segment),
    # so <bos> text starts its first word at the text even if that piece has no '▁'.
    prev_eligible_L = np.concatenate([[False], eligible_L[:-1]])
    same_segment_L = np.concatenate([[False], segment_ids_L[1:] == segment_ids_L[:-1]])
    is_start_L = eligible_L & (word_start_V[np.where(eligible_L, tokens_L, 0)] | ~prev_eligible_L | ~same_segment_L)
    positions = np.flatnonzero(eligible_L)
    word_of = np.cumsum(is_start_L)[positions] - 1  # word index of each eligible position
    lengths_W = np.bincount(word_of)
    order_W = rng.permutation(len(lengths_W))
    # Whole words in random order until `count` tokens are chosen; the last word may overshoot, as in BERT.
    n_words = int(np.searchsorted(np.cumsum(lengths_W[order_W]), count)) + 1
    chosen_W = np.zeros(len(lengths_W), bool)
    chosen_W[order_W[:n_words]] = True
    return positions[chosen_W[word_of]]


def mask_row(tokens_L: np.ndarray, segment_ids_L: np.ndarray, rng: np.random.Generator, *, mask_id: int,
             random_ids: np.ndarray, never_mask: Sequence[int], rate: float = 0.15,
             mask_frac: float = 0.8, random_frac: float = 0.1,
             word_start_V: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One masked-LM example: `inputs` (corrupted tokens), `targets` (the original tokens) and `weights` (1.0
    where the loss counts: the chosen positions). Of the chosen tokens, mask_frac become `mask_id`, random_frac a
    uniform draw from `random_ids` and the rest stay, so the model cannot assume an unmasked token is right."""
    if not 0 < rate <= 1 or mask_frac < 0 or random_frac < 0 or mask_frac + random_frac > 1:
        raise ValueError(f"masking rate={rate} must be in (0, 1] and mask_frac={mask_frac} + "
                         f"random_frac={random_frac} at most 1")
    tokens_L = np.asarray(tokens_L, np.int32)
    segment_ids_L = np.asarray(segment_ids_L, np.int32)
    eligible_L = (segment_ids_L != 0) & ~np.isin(tokens_L, np.asarray(never_mask, np.int32))
    count = _mask_count(int(eligible_L.sum()), rate)
    if word_start_V is None:
        chosen = _choose_tokens(eligible_L, count, rng)
    elif count:
        chosen = _choose_words(tokens_L, segment_ids_L, eligible_L, count, np.asarray(word_start_V, bool), rng)
    else:
        chosen = np.zeros(0, np.int64)

    # One uniform per chosen token decides its fate (per token even under whole-word masking, as in BERT).
    u = rng.random(len(chosen))
    to_mask = chosen[u < mask_frac]
    to_random = chosen[(u >= mask_frac) & (u < mask_frac + random_frac)]
    inputs_L = tokens_L.copy()
    inputs_L[to_mask] = mask_id
    # An index into random_ids: for ids lo..hi-1 the same draws as rng.integers(lo, hi).
    inputs_L[to_random] = np.asarray(random_ids, np.int32)[rng.integers(0, len(random_ids), size=len(to_random))]
    weights_L = np.zeros(len(tokens_L), np.float32)
    weights_L[chosen] = 1.0
    return {"inputs": inputs_L, "targets": tokens_L.copy(), "weights": weights_L}
