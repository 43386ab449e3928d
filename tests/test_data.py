"""Byte tokenizer and the built-in corpus."""

import numpy as np
import pytest

from llm_jax.data import corpus
from llm_jax.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, ByteTokenizer, make_tokenizer

# ---------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("text", ["", "ROMEO:\nO, she doth teach the torches!", "naïve café — ünïcödé ✓ 日本語 🎭"])
def test_byte_tokenizer_round_trips_utf8(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids.dtype == np.int32
    assert len(ids) == len(text.encode("utf-8"))
    assert (ids >= tok.offset).all() and (ids < tok.vocab_size).all()
    assert tok.decode(ids) == text


def test_byte_tokenizer_skips_special_tokens_when_decoding():
    tok = make_tokenizer("byte")
    ids = tok.encode("héllo")
    assert tok.decode(np.concatenate([[BOS_ID], ids, [EOS_ID, PAD_ID, PAD_ID]])) == "héllo"
    assert tok.vocab_size == 259
    assert {PAD_ID, BOS_ID, EOS_ID} == {0, 1, 2}


def test_byte_tokenizer_does_not_decode_padded_vocab_ids_as_bytes():
    """The model's vocab is padded past the tokenizer's 259 ids (to 320); a sampled id in that padding is not a
    byte, so it must not come out as some other character."""
    tok = ByteTokenizer()
    text = tok.decode(np.concatenate([tok.encode("a"), [tok.vocab_size, 300, 319]]))
    assert text.replace("\ufffd", "") == "a", repr(text)


# ---------------------------------------------------------------- corpus


@pytest.fixture(scope="module")
def docs():
    return {split: corpus.documents(split) for split in ("train", "validation")}


def test_train_and_validation_plays_are_disjoint_and_nonempty():
    train, val = corpus.split_plays("train"), corpus.split_plays("validation")
    assert train and val
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(corpus.play_files())
    assert len(train) > len(val)


def test_corpus_documents(docs):
    train, val = docs["train"], docs["validation"]
    assert len(train) > 0 and len(val) > 0
    assert all(d.strip() for d in train + val)
    assert not set(train) & set(val)
    for d in train + val:
        assert "**" not in d, d[:200]
        assert "### " not in d, d[:200]
        assert not d.lstrip().startswith("#"), d[:200]
    # Speaker lines are converted from **NAME** to NAME:
    assert any("\nROMEO:\n" in d for d in train + val)


def test_corpus_is_deterministic(docs):
    assert corpus.documents("validation") == docs["validation"]


def test_unknown_split_is_an_error():
    with pytest.raises(ValueError, match="split"):
        corpus.split_plays("test")
