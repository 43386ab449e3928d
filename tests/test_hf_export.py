"""`llm-jax hf export`: import -> export gives the original file's bytes; llm_jax's own parameters, exported, load in
transformers (AutoModelFor*) and give llm_jax's logits to 1e-4; a trained run exports with a tokenizer that
transformers' AutoTokenizer reads as llm_jax's; models no architecture expresses are refused by key."""

import json

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from llm_jax.checkpoint import safetensors
from llm_jax.cli import main
from llm_jax.data.tokenizer import ByteTokenizer
from llm_jax.hf.exporter import export_hf
from llm_jax.hf.importer import HFError, read_portable
from llm_jax.train.loop import train
from tests import test_hf_bert, test_hf_parity, test_hf_t5
from tests.conftest import small_config
from tests.test_hf_parity import VOCAB, L, _built

AUTO = {"gpt2": transformers.AutoModelForCausalLM, "llama31": transformers.AutoModelForCausalLM,
        "qwen2": transformers.AutoModelForCausalLM,
        "bert": transformers.AutoModelForMaskedLM, "t5": transformers.AutoModelForSeq2SeqLM,
        "t5_relu": transformers.AutoModelForSeq2SeqLM}
TEXT = "Grüße, 世界! naïve café 🙂🚀\tend  of\nline <eos> ½"


def _hf_model(kind: str):
    if kind == "bert":
        return test_hf_bert._hf_bert(tied=False)
    if kind.startswith("t5"):  # T5 v1.1 (gated GELU, a head of its own), or the original (ReLU, tied and scaled)
        return test_hf_t5._hf_model("untied" if kind == "t5" else "relu")
    return test_hf_parity._hf_model(kind)


def _logits(kind: str, model_or_hf, params=None) -> np.ndarray:
    """Logits on fixed random tokens: llm_jax's (model, params) or transformers' (a torch model)."""
    rng = np.random.default_rng(1)
    tokens_BL, dec_BT = rng.integers(0, VOCAB, size=(2, L)), rng.integers(0, VOCAB, size=(2, 12))
    ones, pos = np.ones_like(tokens_BL), np.broadcast_to(np.arange(L), tokens_BL.shape)
    if params is None:
        with torch.no_grad():
            if kind.startswith("t5"):
                return test_hf_t5._reference(model_or_hf, tokens_BL, dec_BT)
            return model_or_hf(torch.tensor(tokens_BL)).logits.numpy()
    if kind.startswith("t5"):
        dec_pos = np.broadcast_to(np.arange(12), dec_BT.shape)
        return test_hf_t5._logits(model_or_hf, params, tokens_BL, ones, pos, dec_BT, np.ones_like(dec_BT), dec_pos)
    if kind == "bert":
        return test_hf_bert._logits(model_or_hf, params, tokens_BL, ones, pos)
    return np.asarray(model_or_hf.apply({"params": params}, tokens_BL, ones, pos))


@pytest.mark.parametrize("kind", ["gpt2", "llama31", "qwen2", "bert", "t5", "t5_relu"])
def test_import_export_round_trip_is_bitwise_and_own_weights_load_in_transformers(kind, tmp_path):
    src, imported = tmp_path / "hf", tmp_path / "imported.safetensors"
    _hf_model(kind).save_pretrained(src)
    assert main(["hf", "import", f"--from={src}", f"--out={imported}"]) == 0
    assert main(["hf", "export", f"--workdir={imported}", f"--out={tmp_path / 'back'}"]) == 0
    original, back = load_file(src / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert sorted(back) == sorted(original)
    for name, array in original.items():
        assert back[name].dtype == array.dtype and back[name].tobytes() == array.tobytes(), name

    # llm_jax's own weights (the import moved away from the original), exported, in transformers' hands.
    tensors, metadata = safetensors.read(imported)
    rng = np.random.default_rng(0)
    own = {k: (v + rng.normal(0, 0.05 + 0.1 * float(v.std()), v.shape)).astype(v.dtype) for k, v in tensors.items()}
    safetensors.write(tmp_path / "own.safetensors", own, metadata)
    shard_mb = 0.05 if kind == "llama31" else 5000  # a few tensors per shard, with an index
    out = tmp_path / "own_hf"
    assert main(["hf", "export", f"--workdir={tmp_path / 'own.safetensors'}", f"--out={out}",
                 f"--max-shard-mb={shard_mb}"]) == 0
    if kind == "llama31":
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) > 2 and not (out / "model.safetensors").exists()
    hf = AUTO[kind].from_pretrained(out).eval()
    model, params = _built(read_portable(src)[0], own, "own", L)
    diff = float(np.abs(_logits(kind, model, params) - _logits(kind, hf)).max())
    print(f"{kind}: exported llm_jax weights, max |logits difference| in transformers {diff:.2e}")
    assert diff <= 1e-4, f"{kind}: max |logits difference| {diff}"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trained") / "run"
    cfg = small_config()
    cfg.train.steps, cfg.checkpoint.every_steps = 2, 0
    train(cfg, workdir, jax.devices()[:1])
    return workdir


def test_a_trained_run_exports_with_a_tokenizer_transformers_reads_as_ours(trained_run, tmp_path):
    workdir = trained_run
    out = tmp_path / "hf"
    assert main(["hf", "export", f"--workdir={workdir}", f"--out={out}"]) == 0
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in out.iterdir()}
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert isinstance(hf, transformers.LlamaForCausalLM)
    from llm_jax.checkpoint.export import read_checkpoint

    _, tensors, meta = read_checkpoint(workdir)
    keys = {k: v for k, v in meta["config"]["model"].items() if k != "vocab_size"}
    keys["vocab_size"] = tensors["embedding"].shape[0]
    model, params = _built(keys, tensors, str(workdir), L)
    rng = np.random.default_rng(2)
    tokens_BL = rng.integers(0, ByteTokenizer.vocab_size, size=(2, L))
    ours = np.asarray(model.apply({"params": params}, tokens_BL, np.ones_like(tokens_BL),
                                  np.broadcast_to(np.arange(L), tokens_BL.shape)))
    with torch.no_grad():
        theirs = hf(torch.tensor(tokens_BL)).logits.numpy()
    diff = float(np.abs(ours - theirs).max())
    print(f"trained tiny decoder: max |logits difference| in transformers {diff:.2e}")
    assert diff <= 1e-4

    tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert ids == ByteTokenizer().encode(TEXT).tolist()
    assert tok.decode(ids) == TEXT
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert (hf.generation_config.eos_token_id, hf.generation_config.pad_token_id) == (2, 0)


def test_a_model_no_architecture_expresses_is_refused_by_key(trained_run, tmp_path):
    workdir = trained_run
    from llm_jax.checkpoint.export import read_checkpoint

    _, tensors, meta = read_checkpoint(workdir)
    config = json.loads(json.dumps(meta["config"]))
    config["model"]["qk_norm"] = True  # no Llama or GPT-2 normalises queries and keys
    path = tmp_path / "qk.safetensors"
    safetensors.write(path, tensors, {"config": json.dumps(config), "tokenizer": json.dumps(meta["tokenizer"])})
    with pytest.raises(HFError, match=r"closest, LlamaForCausalLM, differs in model\.qk_norm=True"):
        export_hf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_export_replaces_only_an_earlier_export_and_never_its_source(trained_run, tmp_path, capsys):
    workdir = trained_run
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep")
    for out, flags, says in ((mine, [], "pass --overwrite"), (mine, ["--overwrite"], "holds thesis.tex"),
                             (workdir, ["--overwrite"], "is or holds the source"),
                             (workdir.parent, ["--overwrite"], "is or holds the source")):
        assert main(["hf", "export", f"--workdir={workdir}", f"--out={out}", *flags]) == 2
        assert says in capsys.readouterr().err
    assert (mine / "thesis.tex").read_text() == "keep" and (workdir / "checkpoints").is_dir()
    out = tmp_path / "hf"
    assert main(["hf", "export", f"--workdir={workdir}", f"--out={out}"]) == 0
    first = (out / "model.safetensors").stat().st_mtime_ns
    assert main(["hf", "export", f"--workdir={workdir}", f"--out={out}", "--overwrite", "--dtype=bfloat16"]) == 0
    assert (out / "model.safetensors").stat().st_mtime_ns != first
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "mine"]  # no .partial or .old left behind


def test_sentencepiece_and_byte_tokenizer_files_give_transformers_our_ids(tmp_path):
    from llm_jax.data import corpus
    from llm_jax.data.tokenizer_train import train_sentencepiece
    from llm_jax.hf.tokenizer_files import write_tokenizer

    (tmp_path / "text.txt").write_text("\n".join(corpus.documents("train")[:10]))
    sp = train_sentencepiece([str(tmp_path / "text.txt")], 400, "bpe", tmp_path / "sp")
    text = f"{TEXT} <pad><bos> 12345"
    for kind, tokenizer in (("sentencepiece", sp), ("byte", ByteTokenizer())):
        out = tmp_path / kind
        out.mkdir()
        ids, _ = write_tokenizer(out, {"data": {"tokenizer": kind, "tokenizer_path": str(sp.model_path)}},
                                 tokenizer.identity())
        assert (ids["pad_token_id"], ids["bos_token_id"], ids["eos_token_id"]) == (0, 1, 2)
        reference = transformers.AutoTokenizer.from_pretrained(out)
        got = reference(text, add_special_tokens=False)["input_ids"]
        assert got == tokenizer.encode(text).tolist(), kind
        assert reference.decode(got) == text and reference.eos_token_id == 2
    # The ids a BERT's or T5's objective added after the tokenizer's come along by name.
    for tokenizer, path in ((ByteTokenizer(), ""), (sp, str(sp.model_path))):
        data = {"tokenizer": tokenizer.kind, "tokenizer_path": path}
        for family, token in (("encoder", "[MASK]"), ("encoder_decoder", "<extra_id_0>")):
            out = tmp_path / f"{tokenizer.kind}_{family}"
            out.mkdir()
            write_tokenizer(out, {"data": data, "model": {"family": family}}, tokenizer.identity())
            reference = transformers.AutoTokenizer.from_pretrained(out)
            assert reference.convert_tokens_to_ids(token) == tokenizer.vocab_size, (tokenizer.kind, family)
            if family == "encoder":
                assert reference.mask_token_id == tokenizer.vocab_size
            else:
                assert reference.convert_tokens_to_ids("<extra_id_99>") == tokenizer.vocab_size + 99
            assert reference(text, add_special_tokens=False)["input_ids"] == tokenizer.encode(text).tolist()
    with pytest.raises(HFError, match="not the one the model was trained with"):
        write_tokenizer(tmp_path, {"data": {"tokenizer": "sentencepiece", "tokenizer_path": str(sp.model_path)}},
                        {"kind": "sentencepiece", "hash": "0123"})
