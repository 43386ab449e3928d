"""Special ids come from a tokenizer's own files, as transformers reads them: SentencePiece models with T5's and
Llama 2's ids, a BERT WordPiece tokenizer's [PAD]/[MASK] (masked LM uses that [MASK] and never draws a special id
as its random token) and a T5 tokenizer.json's <extra_id_N> sentinels (span corruption uses them, by name)."""

import io

import numpy as np
import pytest
import sentencepiece as spm
import transformers

from llm_jax.data.packing import pack_documents
from llm_jax.data.specials import Specials
from llm_jax.data.tokenizer import make_tokenizer
from llm_jax.objectives import extra_tokens, make_objective
from llm_jax.train.sample_seq2seq import generate_seq2seq
from tests.test_encoder_decoder import init_params, logits_of, make_model
from tests.test_objectives import _config

WORDS = ["the", "a", "of", "and", "to", "in", "is", "was", "he", "she", "it", "they", "we", "you", "that", "this",
         "with", "for", "on", "as", "at", "by", "from", "river", "mountain", "quiet", "story", "garden", "window",
         "morning", "evening", "letter", "kitchen", "sailor", "market", "lantern", "winter", "summer", "bright",
         "slowly", "gathered", "wandered", "remembered", "whisper", "yellow", "purple", "seventeen"]
T5_IDS = {"pad_id": 0, "eos_id": 1, "unk_id": 2, "bos_id": -1}  # T5's spiece.model
LLAMA_IDS = {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1}  # Llama 2's tokenizer.model


def _lines(n: int = 150, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, 12)) + "." for _ in range(n)]


def _sentencepiece(directory, file: str, ids: dict[str, int]):
    """A 64-piece SentencePiece model with these special ids, saved as directory/file."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_lines()), model_writer=model, vocab_size=64,
                                   minloglevel=2, num_threads=1, **ids)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / file).write_bytes(model.getvalue())
    return directory / file


def _rows(tok, row_len: int, n: int = 60) -> dict[str, np.ndarray]:
    return pack_documents([tok.encode(line) for line in _lines(n, seed=1)], row_len, "concat", tok.specials)


@pytest.fixture(scope="module")
def t5_dirs(tmp_path_factory):
    """(a directory with a T5-style spiece.model, the tokenizer.json transformers' T5Tokenizer saves from it)."""
    sp_dir = tmp_path_factory.mktemp("t5_sp")
    _sentencepiece(sp_dir, "spiece.model", T5_IDS)
    hf_dir = tmp_path_factory.mktemp("t5_hf")
    transformers.T5Tokenizer.from_pretrained(str(sp_dir)).save_pretrained(str(hf_dir))
    return sp_dir, hf_dir


def test_sentencepiece_specials_are_the_models_own_as_transformers_reads_them(t5_dirs, tmp_path):
    t5 = make_tokenizer("sentencepiece", str(t5_dirs[0] / "spiece.model"))
    reference = transformers.T5Tokenizer.from_pretrained(str(t5_dirs[0]))
    assert (t5.specials.pad, t5.specials.eos) == (reference.pad_token_id, reference.eos_token_id) == (0, 1)
    assert reference.bos_token_id is None and not t5.specials.has_bos and t5.specials.bos == t5.specials.eos
    # T5 checkpoints' decoder_start_token_id is their pad id (the "usually" of transformers' _shift_right).
    assert t5.specials.decoder_start == reference.pad_token_id == 0
    assert t5.specials.sentinels == () and t5.specials.mask is None  # T5Tokenizer adds them after the sp vocab

    llama_path = _sentencepiece(tmp_path / "llama", "tokenizer.model", LLAMA_IDS)
    llama = make_tokenizer("sentencepiece", str(llama_path))
    reference = transformers.LlamaTokenizer.from_pretrained(str(llama_path.parent))
    assert (llama.specials.bos, llama.specials.eos) == (reference.bos_token_id, reference.eos_token_id) == (1, 2)
    assert reference.pad_token_id is None and llama.specials.pad == llama.specials.eos  # no pad: pads with eos
    assert llama.specials.decoder_start == 1

    # The encoder-decoder's decoder starts from it: T5's pad 0, Llama's bos 1.
    for tok, start in ((t5, 0), (llama, 1)):
        cfg = _config("span_corruption")
        objective = make_objective(cfg, tok)
        rows = _rows(tok, objective.row_len())
        example = objective.example({"tokens": rows["tokens"][0], "segment_ids": rows["segment_ids"][0]},
                                    np.random.default_rng(0))
        assert example["decoder_inputs"][0] == start
        assert objective.sentinel_ids[0] == tok.vocab_size, "no sentinels of its own: ids after the vocabulary"


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A WordPiece tokenizer whose specials are scattered through the vocabulary, not its lowest ids."""
    directory = tmp_path_factory.mktemp("bert")
    specials = {7: "[UNK]", 15: "[CLS]", 23: "[SEP]", 31: "[MASK]", 40: "[PAD]"}
    words = iter(WORDS)
    vocab = [specials[i] if i in specials else next(words) for i in range(len(WORDS) + len(specials))]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # from_pretrained reads vocab.txt in order (transformers 5's constructor would start an empty vocabulary)
    transformers.BertTokenizerFast.from_pretrained(str(directory)).save_pretrained(str(directory / "hf"))
    return directory / "hf"


def test_bert_pad_and_mask_are_its_own_and_masked_lm_uses_them(bert_dir):
    tok = make_tokenizer("hf", str(bert_dir))
    reference = transformers.BertTokenizerFast.from_pretrained(str(bert_dir))
    s = tok.specials
    assert (s.pad, s.mask, s.bos, s.eos) == (reference.pad_token_id, reference.mask_token_id,
                                             reference.cls_token_id, reference.sep_token_id) == (40, 31, 15, 23)
    assert set(s.reserved) == set(reference.all_special_ids)
    assert tok.encode(_lines(1)[0]).tolist() == reference(_lines(1)[0], add_special_tokens=False)["input_ids"]

    cfg = _config("masked_lm", "objective.mask_rate=0.5", "objective.mask_token_frac=0.5",
                  "objective.random_token_frac=0.5")
    assert extra_tokens(cfg, s) == 0, "the tokenizer has [MASK]: the vocabulary does not grow"
    objective = make_objective(cfg, tok)
    rows = _rows(tok, objective.row_len())
    rng = np.random.default_rng(0)
    masked = randoms = 0
    for tokens, segment_ids in zip(rows["tokens"], rows["segment_ids"], strict=True):
        ex = objective.example({"tokens": tokens, "segment_ids": segment_ids}, rng)
        chosen = ex["weights"] > 0
        assert not np.isin(ex["targets"][chosen], reference.all_special_ids).any(), "a special id was chosen"
        new = ex["inputs"][chosen]
        replaced = new[(new != reference.mask_token_id) & (new != ex["targets"][chosen])]
        assert not np.isin(replaced, reference.all_special_ids).any(), f"a special id drawn at random: {replaced}"
        assert ex["inputs"].max() < tok.vocab_size
        masked += (new == reference.mask_token_id).sum()
        randoms += len(replaced)
    assert masked > 50 and randoms > 50, (masked, randoms)


def test_t5_sentinels_by_name_and_span_corruption_uses_them(t5_dirs):
    tok = make_tokenizer("hf", str(t5_dirs[1]))
    reference = transformers.T5Tokenizer.from_pretrained(str(t5_dirs[1]))
    s = tok.specials
    names = [f"<extra_id_{n}>" for n in range(100)]
    assert s.sentinels == tuple(reference.convert_tokens_to_ids(names))
    assert s.sentinels[0] == tok.vocab_size - 1 == len(reference) - 1, "Hugging Face's T5 counts them downwards"
    assert (s.pad, s.eos, s.decoder_start) == (reference.pad_token_id, reference.eos_token_id, 0)
    assert not s.has_bos

    cfg = _config("span_corruption")
    assert extra_tokens(cfg, s) == 0, "the tokenizer has the sentinels: the vocabulary does not grow"
    objective = make_objective(cfg, tok)
    rows = _rows(tok, objective.row_len())
    ex = objective.example({"tokens": rows["tokens"][0], "segment_ids": rows["segment_ids"][0]},
                           np.random.default_rng(0))
    first = ex["encoder_inputs"][np.isin(ex["encoder_inputs"], s.sentinels)][0]
    assert first == reference.convert_tokens_to_ids("<extra_id_0>")
    assert ex["targets"][0] == first and ex["decoder_inputs"][0] == 0
    assert max(ex["encoder_inputs"].max(), ex["targets"].max()) < tok.vocab_size


def test_seq2seq_decoding_starts_and_stops_at_the_tokenizers_ids():
    """Greedy cached decoding with T5's ids (start 0, eos 1) equals the full model fed <pad> + what it wrote."""
    t5 = Specials(pad=0, bos=1, eos=1, has_bos=False)
    model = make_model(scan=False)
    params = init_params(model, seed=1, scale=4.0)
    prompts, max_new = [[5, 6, 7, 1], [9, 30, 31, 32, 1]], 10
    outs = generate_seq2seq(model, params, prompts, max_new, temperature=0.0, specials=t5)
    L, T = 8, max_new + 1
    ex = {k: np.zeros((len(prompts), n), np.int32) for k, n in (("encoder_inputs", L), ("encoder_segment_ids", L),
                                                               ("decoder_inputs", T), ("segment_ids", T))}
    for i, (prompt, new) in enumerate(zip(prompts, outs, strict=True)):
        ex["encoder_inputs"][i, : len(prompt)], ex["encoder_segment_ids"][i, : len(prompt)] = prompt, 1
        ex["decoder_inputs"][i, : len(new) + 1], ex["segment_ids"][i, : len(new) + 1] = [t5.decoder_start, *new], 1
    ex["encoder_positions"] = np.broadcast_to(np.arange(L, dtype=np.int32), (len(prompts), L))
    ex["positions"] = np.broadcast_to(np.arange(T, dtype=np.int32), (len(prompts), T))
    greedy = logits_of(model, params, ex).argmax(-1)
    for prompt, new, row in zip(prompts, outs, greedy, strict=True):
        np.testing.assert_array_equal(new, row[: len(new)], err_msg=f"decoding of {prompt} did not start from 0")
        assert t5.eos not in new.tolist()
        if len(new) < max_new:
            assert row[len(new)] == t5.eos, f"decoding of {prompt} stopped without eos"
