"""data.tokenizer=hf: a Hugging Face tokenizer.json (a byte-level BPE trained here, GPT-2 style) gives the same ids
as `transformers`' fast tokenizer on multilingual text with emoji and special tokens, reads its special ids from
the directory, packs documents with them, and is pinned by its identity."""

import json

import numpy as np
import pytest
import tokenizers
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from llm_jax.config import ConfigError
from llm_jax.data import corpus
from llm_jax.data.packing import pack_documents
from llm_jax.data.tokenizer import make_tokenizer

TEXT = "Héllo wörld!  Tabs\tand\nnewlines — 日本語のテキスト, Ελληνικά, emoji 🎭🙂 <|endoftext|> end."


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A GPT-2-style byte-level BPE trained on the built-in corpus; <|endoftext|> is bos, eos and pad."""
    directory = tmp_path_factory.mktemp("tok")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus.documents("train")[:40], trainer)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "tokenizer_class": "GPT2TokenizerFast"}))
    return directory


def test_the_same_ids_as_transformers_and_a_lossless_round_trip(hf_dir):
    ours = make_tokenizer("hf", str(hf_dir))
    reference = transformers.PreTrainedTokenizerFast(tokenizer_file=str(hf_dir / "tokenizer.json"))
    ids = ours.encode(TEXT)
    assert ids.tolist() == reference(TEXT, add_special_tokens=False)["input_ids"]
    end = reference.convert_tokens_to_ids("<|endoftext|>")
    assert end in ids.tolist(), "the special token in the text is one id"
    assert ours.decode([i for i in ids if i != end]) == TEXT.replace("<|endoftext|>", "")
    assert ours.vocab_size == 600


def test_special_ids_come_from_the_directory_and_packing_uses_them(hf_dir):
    tok = make_tokenizer("hf", str(hf_dir / "tokenizer.json"))
    end = tok.tok.token_to_id("<|endoftext|>")
    assert (tok.specials.pad, tok.specials.bos, tok.specials.eos) == (end, end, end)
    rows = pack_documents([tok.encode("a b"), tok.encode("c")], 16, "pad", tok.specials)
    assert rows["tokens"][0][0] == end and end in rows["tokens"][0][1:]
    assert np.all(rows["tokens"][rows["segment_ids"] == 0] == end)
    assert tok.token_bytes()[end] == 0 and tok.token_bytes()[tok.encode("e")[0]] == 1


def test_identity_changes_with_the_file_and_a_missing_file_is_a_config_error(hf_dir, tmp_path):
    a = make_tokenizer("hf", str(hf_dir)).identity()
    data = json.loads((hf_dir / "tokenizer.json").read_text())
    data["added_tokens"][0]["content"] = "<|end|>"
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|end|>"}))
    b = make_tokenizer("hf", str(tmp_path)).identity()
    assert a["kind"] == b["kind"] == "hf" and a["hash"] != b["hash"]
    with pytest.raises(ConfigError, match=r"data\.tokenizer_path='nowhere' is not a tokenizer\.json"):
        make_tokenizer("hf", "nowhere")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({}))
    with pytest.raises(ConfigError, match="no eos token"):
        make_tokenizer("hf", str(tmp_path))


# Llama 3's pre-tokenizer split (contractions, letters, 1-3 digits, punctuation, newlines, spaces), before bytes.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")


def _wordpiece(directory):
    """A BERT WordPiece tokenizer (lower-casing, accent stripping, Chinese characters split), saved by transformers."""
    words = sorted({w.lower() for doc in corpus.documents("train")[:20] for w in doc.split() if w.isalpha()})[:400]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz", *words,
             *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"), "!", ",", ".", "—", "日", "本"]
    vocab = {piece: i for i, piece in enumerate(dict.fromkeys(vocab))}
    transformers.BertTokenizer(vocab=vocab).save_pretrained(directory)


def _llama3_bpe(directory):
    """A Llama 3-style BPE: its regex split then byte-level, <|begin_of_text|> / <|end_of_text|> as specials."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus.documents("train")[:40], trainer)
    tok.save(str(directory / "tokenizer.json"))
    config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
              "tokenizer_class": "PreTrainedTokenizerFast"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("kind", ["wordpiece", "llama3"])
def test_wordpiece_and_llama3_bpe_give_transformers_ids(kind, tmp_path):
    (_wordpiece if kind == "wordpiece" else _llama3_bpe)(tmp_path)
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path)
    specials = {"wordpiece": "[SEP] [MASK]", "llama3": "<|end_of_text|>"}[kind]
    text = f"{TEXT} {specials} 12345 it's they'll   spaces\n\n"
    ours = make_tokenizer("hf", str(tmp_path))
    ids = ours.encode(text).tolist()
    assert ids == reference(text, add_special_tokens=False)["input_ids"]
    assert len(set(ids)) > 10 and all(i >= 0 for i in ids)
    s = ours.specials
    assert s.eos == (reference.sep_token_id if kind == "wordpiece" else reference.eos_token_id)
    assert s.pad == (reference.pad_token_id if kind == "wordpiece" else reference.eos_token_id)
