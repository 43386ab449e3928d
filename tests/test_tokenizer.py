"""SentencePiece tokenizers trained in the test: exact round trips, shared special ids, identity, bad input."""

import json
import pickle

import numpy as np
import pytest

from llm_jax.config import ConfigError
from llm_jax.data import corpus
from llm_jax.data.sources import DataError
from llm_jax.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, ByteTokenizer, make_tokenizer
from llm_jax.data.tokenizer_train import train_sentencepiece
from tests.conftest import TRAIN_CONFIG
from tests.test_cli import SMALL, llm_jax

TRICKY = " ROMEO:\n  But soft!\twhat light — é, 日本語, emoji 🙂\n\n\n  trailing  \n"


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "plays.txt"
    path.write_text("\n\n".join(corpus.documents("validation")[:40]), encoding="utf-8")
    return path


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_round_trip_is_exact_and_compresses(text_file, tmp_path, model_type):
    tok = train_sentencepiece([str(text_file)], 600, model_type, tmp_path)
    assert tok.vocab_size == 600
    assert tok.decode(tok.encode(TRICKY)) == TRICKY  # byte fallback covers what training never saw
    doc = corpus.documents("train")[5]
    ids = tok.encode(doc)
    assert tok.decode(ids) == doc
    assert len(ids) < 0.7 * len(doc.encode()), "a trained tokenizer should beat one token per byte"
    assert [tok.sp.id_to_piece(i) for i in (PAD_ID, BOS_ID, EOS_ID)] == ["<pad>", "<s>", "</s>"]
    assert ids.min() > EOS_ID, "text never encodes to the special ids"
    token_bytes = tok.token_bytes()  # for bits per byte: the ids' byte counts add up to the text's
    assert token_bytes[ids].sum() == len(doc.encode()) and token_bytes[PAD_ID] == token_bytes[EOS_ID] == 0
    assert token_bytes[tok.encode(TRICKY)].sum() == len(TRICKY.encode())
    info = json.loads((tmp_path / "tokenizer.json").read_text())
    assert info["kind"] == "sentencepiece" and info["vocab_size"] == 600 and info["model_type"] == model_type


def test_identity_is_a_content_hash(text_file, tmp_path):
    a = train_sentencepiece([str(text_file)], 600, "bpe", tmp_path / "a").identity()
    b = train_sentencepiece([str(text_file)], 600, "bpe", tmp_path / "b").identity()
    c = train_sentencepiece([str(text_file)], 700, "bpe", tmp_path / "c").identity()
    assert a["hash"] == b["hash"], "training is repeatable"
    assert a["hash"] != c["hash"]
    assert ByteTokenizer().identity()["hash"] not in (a["hash"], c["hash"])


def test_pickles_for_worker_processes(text_file, tmp_path):
    tok = train_sentencepiece([str(text_file)], 600, "bpe", tmp_path)
    tok.encode("load the processor first")
    clone = pickle.loads(pickle.dumps(tok))
    np.testing.assert_array_equal(clone.encode(TRICKY), tok.encode(TRICKY))


def test_jsonl_input_uses_the_text_field(tmp_path):
    path = tmp_path / "docs.jsonl"
    docs = corpus.documents("validation")[:30]
    path.write_text("\n".join(json.dumps({"body": d, "id": i}) for i, d in enumerate(docs)) + "\n")
    tok = train_sentencepiece([str(tmp_path / "*.jsonl")], 500, "bpe", tmp_path / "out", text_field="body")
    assert tok.decode(tok.encode(docs[0])) == docs[0]


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(DataError, match=r"'nothing-here/\*\.txt' matches no file"):
        train_sentencepiece(["nothing-here/*.txt"], 500, "bpe", tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match=r"empty\.txt"):
        train_sentencepiece([str(tmp_path / "empty.txt")], 500, "bpe", tmp_path / "o")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: bad JSON line"):
        train_sentencepiece([str(bad)], 500, "bpe", tmp_path / "o")
    (tmp_path / "ok.txt").write_text("some text\n")
    with pytest.raises(ValueError, match="--vocab-size=100 must exceed"):
        train_sentencepiece([str(tmp_path / "ok.txt")], 100, "bpe", tmp_path / "o")


def test_missing_model_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.tokenizer_path"):
        make_tokenizer("sentencepiece", str(tmp_path / "nope.model"))


def test_cli_trains_a_tokenizer_then_a_model_with_it(text_file, tmp_path):
    out = llm_jax("tokenizer", "train", f"--input={text_file}", "--vocab-size=512", f"--out={tmp_path / 'tok'}")
    assert out.returncode == 0, out.stderr
    model = tmp_path / "tok" / "tokenizer.model"
    enc = llm_jax("tokenizer", "encode", f"--tokenizer={model}", "But soft")
    ids = enc.stdout.split()
    assert enc.returncode == 0 and ids and all(i.isdigit() for i in ids)
    dec = llm_jax("tokenizer", "decode", f"--tokenizer={model}", " ".join(ids))
    assert dec.stdout == "But soft\n"

    run = tmp_path / "run"
    out = llm_jax("train", f"--config={TRAIN_CONFIG}:model=tiny,topology=cpu", f"--workdir={run}",
                  "--config.data.tokenizer=sentencepiece", f"--config.data.tokenizer_path={model}",
                  "--config.train.steps=3", *SMALL)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "tokenizer: sentencepiece (512 tokens)" in out.stdout
    recorded = json.loads((run / "tokenizer.json").read_text())
    assert recorded["kind"] == "sentencepiece" and recorded["vocab_size"] == 512
    assert json.loads((run / "config.json").read_text())["model"]["vocab_size"] == 512

    out = llm_jax("train", f"--workdir={tmp_path / 'bad'}", "--config.data.tokenizer=sentencepiece")
    assert out.returncode == 2 and "data.tokenizer_path" in out.stderr
