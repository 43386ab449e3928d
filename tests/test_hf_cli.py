"""`llm-jax hf import` / `hf export` end to end: GPT-2- and Llama-shaped Hugging Face directories with their tokenizer
become files that `llm-jax sample` reads (or it reads the directory itself); greedy generation of 20 tokens equals
`transformers`' generate; an imported GPT-2 is fine-tuned (`model=FILE.safetensors`), exported, and loads in
transformers with llm_jax's logits."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from llm_jax.cli import main
from tests.conftest import REPO
from tests.test_hf_tokenizer import hf_dir  # noqa: F401 (the fixture: a byte-level BPE trained on the corpus)

PROMPT = "ROMEO:"


def _model_dir(kind: str, tokenizer_dir, directory):
    """A random `kind` model over the fixture's tokenizer, saved with it in `directory`."""
    shutil.copytree(tokenizer_dir, directory)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"))
    end = tok.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=600, n_positions=64,
                                      bos_token_id=end, eos_token_id=end, initializer_range=0.2)
        transformers.GPT2LMHeadModel(cfg).eval().save_pretrained(directory)
    else:  # Llama 3.1's layout: GQA, scaled rope, untied head
        rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16, "rope_theta": 500000.0}
        cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                       num_key_value_heads=2, intermediate_size=96, vocab_size=600,
                                       max_position_embeddings=64, rope_scaling=rope, rope_theta=500000.0,
                                       bos_token_id=end, eos_token_id=end, initializer_range=0.2)
        transformers.LlamaForCausalLM(cfg).eval().save_pretrained(directory)
    return directory, end


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llm_jax", *args], cwd=REPO, capture_output=True, text=True)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_import_then_sample_equals_transformers_greedy_generation(kind, hf_dir, tmp_path):  # noqa: F811
    directory, end = _model_dir(kind, hf_dir, tmp_path / kind)
    out = tmp_path / f"{kind}.safetensors"
    done = _run("hf", "import", f"--from={directory}", f"--out={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "decoder model" in done.stdout
    if kind == "gpt2":
        again = _run("hf", "import", f"--from={directory}", f"--out={out}")
        assert again.returncode == 2 and "--overwrite" in again.stderr

    # GPT-2 from the imported file; Llama straight from the Hugging Face directory, read tensor by tensor.
    source = out if kind == "gpt2" else directory
    sampled = _run("sample", f"--workdir={source}", f"--prompt={PROMPT}", "--max-new-tokens=20", "--temperature=0")
    assert sampled.returncode == 0, sampled.stderr[-3000:]

    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"))
    model = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    ids = [end, *tok(PROMPT, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        new = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False, pad_token_id=end)[0, len(ids):]
    new = new.tolist()
    new = new[: new.index(end)] if end in new else new
    assert len(new) >= 5, "the reference should generate some tokens before an <|endoftext|>"
    assert f"--- sample 1 ---\n{PROMPT}{tok.decode(new)}" in sampled.stdout, sampled.stdout[-1500:]


def test_import_fine_tune_export_loads_in_transformers(hf_dir, tmp_path):  # noqa: F811
    directory, _ = _model_dir("gpt2", hf_dir, tmp_path / "gpt2")
    imported, run, out = tmp_path / "gpt2.safetensors", tmp_path / "run", tmp_path / "gpt2_ft"
    assert main(["hf", "import", f"--from={directory}", f"--out={imported}"]) == 0
    assert main(["train", f"--config=configs/train.py:model={imported}", f"--workdir={run}",
                 "--config.train.steps=3", "--config.train.seq_len=32", "--config.train.global_batch=8",
                 "--config.train.eval_batches=1", "--config.sample.max_new_tokens=0"]) == 0
    assert "parameters from" in (run / "train.log").read_text()
    assert main(["hf", "export", f"--workdir={run}", f"--out={out}"]) == 0

    from llm_jax.checkpoint.export import read_checkpoint
    from tests.test_hf_parity import _built

    _, tensors, meta = read_checkpoint(run)
    assert not np.array_equal(tensors["embedding"], transformers.GPT2LMHeadModel.from_pretrained(
        directory).transformer.wte.weight.detach().numpy()), "fine-tuning should have moved the weights"
    model, params = _built(meta["config"]["model"], tensors, str(run), 32)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = tok("ROMEO: O, she doth teach the torches to burn bright!")["input_ids"]
    assert ids == transformers.PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"))(
        "ROMEO: O, she doth teach the torches to burn bright!")["input_ids"]
    tokens = np.array([ids])
    ours = np.asarray(model.apply({"params": params}, tokens, np.ones_like(tokens), np.arange(tokens.shape[1])[None]))
    with torch.no_grad():
        theirs = hf(torch.tensor(tokens)).logits.numpy()
    assert float(np.abs(ours - theirs).max()) <= 1e-4


def test_a_directory_without_config_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    done = _run("hf", "import", f"--from={tmp_path / 'empty'}", f"--out={tmp_path / 'x.safetensors'}")
    assert done.returncode == 2 and "has no config.json" in done.stderr


def _edit_config(d, **changes):
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, **changes}))


def _edit_tensors(d, **changes):
    tensors = load_file(d / "model.safetensors")
    save_file({**tensors, **changes}, d / "model.safetensors")


BAD = {  # what is wrong with the directory -> what the one-line error says
    "config a list": (lambda d: (d / "config.json").write_text("[1, 2]"), "holds a JSON list, not an object"),
    "size a string": (lambda d: _edit_config(d, hidden_size="64"), "config.json: "),
    "gelu llama": (lambda d: _edit_config(d, hidden_act="gelu"), "hidden_act 'gelu' is not supported"),
    "vocab": (lambda d: _edit_config(d, vocab_size=500), "implies (500, 64)"),
    "norm shape": (lambda d: _edit_tensors(d, **{"model.norm.weight": np.ones(16, np.float32)}),
                   "'model.norm.weight' has shape (16,), but config.json implies (64,)"),
    "truncated": (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:5000]),
                  "is not a readable safetensors file"),
    "tied head": (lambda d: _edit_config(d, tie_word_embeddings=True), "set tie_word_embeddings to false"),
    "index outside": (lambda d: (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.norm.weight": "../elsewhere.safetensors"}})), "weight_map must map tensor names"),
}


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama") / "llama"
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(num_hidden_layers=1, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=96, vocab_size=300, max_position_embeddings=64)
    transformers.LlamaForCausalLM(cfg).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("case", BAD)
def test_a_bad_directory_is_one_line_naming_what_is_wrong(case, llama_dir, tmp_path, capsys):
    directory = tmp_path / "model"
    shutil.copytree(llama_dir, directory)
    if case != "tied head":  # untied by default; this case keeps its own (different) lm_head
        _edit_config(directory, tie_word_embeddings=False)
    BAD[case][0](directory)
    out = tmp_path / "x.safetensors"
    assert main(["hf", "import", f"--from={directory}", f"--out={out}"]) == 2
    err = capsys.readouterr().err
    assert BAD[case][1] in err and err.count("\n") == 1, err
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))
    assert main(["sample", f"--workdir={directory}", "--max-new-tokens=1"]) == 2  # read directly: the same check


def test_import_refuses_to_write_inside_the_source(llama_dir, tmp_path, capsys):
    directory = tmp_path / "model"
    shutil.copytree(llama_dir, directory)
    before = (directory / "model.safetensors").read_bytes()
    out = directory / "model.safetensors"
    assert main(["hf", "import", f"--from={directory}", f"--out={out}", "--overwrite"]) == 2
    assert "inside the directory being imported" in capsys.readouterr().err
    assert (directory / "model.safetensors").read_bytes() == before


def test_tensors_the_import_leaves_out_are_named(llama_dir, tmp_path, capsys):
    directory = tmp_path / "model"
    shutil.copytree(llama_dir, directory)
    _edit_tensors(directory, **{"model.layers.1.mlp.up_proj.weight": np.zeros((96, 64), np.float32)})
    assert main(["hf", "import", f"--from={directory}", f"--out={tmp_path / 'x.safetensors'}"]) == 0
    out = capsys.readouterr().out
    assert "note: 1 tensors of" in out and "model.layers.1.mlp.up_proj.weight" in out, out
