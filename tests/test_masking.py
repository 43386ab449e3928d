"""Masked-LM rows: the fixed 15% count, the 80/10/10 split, specials untouched, whole words, determinism."""

import numpy as np
import pytest

from llm_jax.data import corpus
from llm_jax.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, ByteTokenizer
from llm_jax.data.tokenizer_train import train_sentencepiece
from llm_jax.objectives.masking import mask_row, word_start_table

VOCAB, MASK_ID, L = 300, 300, 128
SPECIALS = (PAD_ID, BOS_ID, EOS_ID)
ARGS = {"mask_id": MASK_ID, "random_ids": np.arange(3, VOCAB), "never_mask": SPECIALS}


def packed_row(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A few <bos> text <eos> pieces (the first may be the cut tail of a document) and some padding."""
    tokens, segment_ids = [], []
    length = int(rng.integers(L // 2, L + 1))  # the rest is padding
    while len(tokens) < length:
        piece = list(rng.integers(3, VOCAB, int(rng.integers(1, 60))))
        if tokens or rng.random() < 0.5:
            piece = [BOS_ID, *piece, EOS_ID]
        piece = piece[:length - len(tokens)]
        segment_ids += [(segment_ids[-1] if segment_ids else 0) + 1] * len(piece)
        tokens += piece
    pad = L - len(tokens)
    return np.array(tokens + [PAD_ID] * pad, np.int32), np.array(segment_ids + [0] * pad, np.int32)


def eligible(tokens_L, segment_ids_L):
    return (segment_ids_L != 0) & ~np.isin(tokens_L, SPECIALS)


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(0)
    return [packed_row(rng) for _ in range(2000)]


def test_fixed_count_split_and_untouched_specials(rows):
    chosen = masked = replaced = kept = 0
    for i, (tokens_L, segment_ids_L) in enumerate(rows):
        out = mask_row(tokens_L, segment_ids_L, np.random.default_rng(i), **ARGS)
        ok_L = eligible(tokens_L, segment_ids_L)
        hit_L = out["weights"] == 1.0
        assert set(np.unique(out["weights"])) <= {0.0, 1.0}
        assert hit_L.sum() == max(1, round(0.15 * ok_L.sum())), "BERT's fixed count per row"
        assert not (hit_L & ~ok_L).any(), "a special id or padding was chosen"
        np.testing.assert_array_equal(out["targets"], tokens_L)
        np.testing.assert_array_equal(out["inputs"][~hit_L], tokens_L[~hit_L])
        new = out["inputs"][hit_L]
        swapped = (new != MASK_ID) & (new != tokens_L[hit_L])
        assert ((new[swapped] >= 3) & (new[swapped] < VOCAB)).all(), "random ids outside random_ids"
        chosen += hit_L.sum()
        masked += (new == MASK_ID).sum()
        replaced += swapped.sum()
        kept += (new == tokens_L[hit_L]).sum()
    assert chosen > 25_000
    assert masked / chosen == pytest.approx(0.8, abs=0.01)
    # A random replacement equals the original 1 time in 297: those count as kept.
    assert replaced / chosen == pytest.approx(0.1 * 296 / 297, abs=0.008)
    assert kept / chosen == pytest.approx(0.1 + 0.1 / 297, abs=0.008)


def test_rate_and_fractions_are_honoured(rows):
    tokens_L, segment_ids_L = rows[0]
    n = eligible(tokens_L, segment_ids_L).sum()
    out = mask_row(tokens_L, segment_ids_L, np.random.default_rng(0), **{**ARGS, "rate": 0.5, "mask_frac": 1.0,
                                                                         "random_frac": 0.0})
    hit_L = out["weights"] == 1.0
    assert hit_L.sum() == round(0.5 * n) and (out["inputs"][hit_L] == MASK_ID).all()
    out = mask_row(tokens_L, segment_ids_L, np.random.default_rng(0), **{**ARGS, "mask_frac": 0.0,
                                                                         "random_frac": 0.0})
    np.testing.assert_array_equal(out["inputs"], tokens_L)  # chosen but all kept: only the weights say which
    with pytest.raises(ValueError, match="mask_frac"):
        mask_row(tokens_L, segment_ids_L, np.random.default_rng(0), **{**ARGS, "mask_frac": 0.95})


def test_rows_with_few_or_no_eligible_tokens():
    tokens_L = np.array([BOS_ID, 7, EOS_ID, PAD_ID], np.int32)
    out = mask_row(tokens_L, np.array([1, 1, 1, 0], np.int32), np.random.default_rng(0), **ARGS)
    np.testing.assert_array_equal(out["weights"], [0, 1, 0, 0])  # round(0.15) = 0, but at least one
    tokens_L = np.array([BOS_ID, EOS_ID, PAD_ID, PAD_ID], np.int32)
    for table in (None, np.ones(VOCAB, bool)):
        out = mask_row(tokens_L, np.array([1, 1, 0, 0], np.int32), np.random.default_rng(0), **ARGS,
                       word_start_V=table)
        assert out["weights"].sum() == 0 and (out["inputs"] == tokens_L).all()


@pytest.mark.parametrize("whole_words", [False, True])
def test_same_seed_same_example(rows, whole_words):
    table = np.random.default_rng(1).random(VOCAB) < 0.3 if whole_words else None
    tokens_L, segment_ids_L = rows[3]
    a, b, c = (mask_row(tokens_L, segment_ids_L, np.random.default_rng(seed), **ARGS, word_start_V=table)
               for seed in (5, 5, 6))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["weights"], c["weights"]) or not np.array_equal(a["inputs"], c["inputs"])


def words_of(tokens_L, segment_ids_L, starts_V) -> list[list[int]]:
    """Word segmentation written plainly: a word is a start token and the non-start tokens after it, broken by
    anything ineligible and by segment boundaries."""
    words, current = [], None
    ok_L = eligible(tokens_L, segment_ids_L)
    for i in range(len(tokens_L)):
        if not ok_L[i]:
            current = None
            continue
        if current is None or starts_V[tokens_L[i]] or segment_ids_L[i] != segment_ids_L[i - 1]:
            current = []
            words.append(current)
        current.append(i)
    return words


def test_whole_words_are_chosen_entirely(rows):
    starts_V = np.random.default_rng(1).random(VOCAB) < 0.3  # words of about 3 tokens
    long_words_hit = mixed_words = chosen = total = 0
    for i, (tokens_L, segment_ids_L) in enumerate(rows[:1000]):
        out = mask_row(tokens_L, segment_ids_L, np.random.default_rng(i), **ARGS, word_start_V=starts_V)
        hit_L = out["weights"] == 1.0
        assert not (hit_L & ~eligible(tokens_L, segment_ids_L)).any()
        hit_words = []
        for word in words_of(tokens_L, segment_ids_L, starts_V):
            assert hit_L[word].all() or not hit_L[word].any(), f"row {i}: word {word} was chosen in part"
            if hit_L[word].all():
                hit_words.append(word)
                long_words_hit += len(word) > 1
                masked = out["inputs"][word] == MASK_ID
                mixed_words += masked.any() and not masked.all()
        target = max(1, round(0.15 * eligible(tokens_L, segment_ids_L).sum()))
        n_hit = int(hit_L.sum())
        # Words are added until the count is reached: only the last one may overshoot it.
        assert target <= n_hit < target + max(len(w) for w in hit_words)
        chosen += n_hit
        total += eligible(tokens_L, segment_ids_L).sum()
    assert long_words_hit > 1000 and mixed_words > 100, "multi-token words chosen, and 80/10/10 is per token"
    assert 0.15 <= chosen / total < 0.19  # the last word overshoots by ~1.5 tokens of ~14


@pytest.fixture(scope="module")
def sentencepiece(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "plays.txt"
    path.write_text("\n\n".join(corpus.documents("validation")[:20]), encoding="utf-8")
    return train_sentencepiece([str(path)], 500, "bpe", tmp_path_factory.mktemp("tok"))


def test_word_start_table_from_sentencepiece(sentencepiece):
    starts_V = word_start_table(sentencepiece)
    sp = sentencepiece.sp
    assert starts_V.shape == (sentencepiece.vocab_size,) and starts_V.dtype == bool
    assert starts_V[[PAD_ID, BOS_ID, EOS_ID, sp.unk_id()]].all()
    assert 10 < starts_V.sum() < sentencepiece.vocab_size - 100
    words = ["thou", "art", "more", "lovely", "and", "more", "temperate", "than", "Constantinopolitans"]
    ids = sentencepiece.encode(" " + " ".join(words))
    assert len(ids) > len(words), "some words need several pieces"
    assert starts_V[ids].sum() == len(words)
    pieces = [sp.id_to_piece(int(i)) for i in ids]
    assert all(starts_V[i] == p.startswith("\u2581") for i, p in zip(ids, pieces, strict=True))
    assert starts_V[sentencepiece.encode("\n")].all(), "a newline starts a word"

    # End to end: text rows, whole words by the table.
    rng = np.random.default_rng(0)
    text = corpus.documents("validation")[30]
    tokens_L = np.concatenate([[BOS_ID], sentencepiece.encode(text)[:L - 2], [EOS_ID]]).astype(np.int32)
    segment_ids_L = np.ones(len(tokens_L), np.int32)
    out = mask_row(tokens_L, segment_ids_L, rng, **{**ARGS, "random_ids": np.arange(3, sentencepiece.vocab_size)},
                   word_start_V=starts_V)
    hit_L = out["weights"] == 1.0
    for word in words_of(tokens_L, segment_ids_L, starts_V):
        assert hit_L[word].all() or not hit_L[word].any()


def test_byte_tokenizer_has_no_words():
    with pytest.raises(ValueError, match=r"data\.tokenizer=sentencepiece"):
        word_start_table(ByteTokenizer())
