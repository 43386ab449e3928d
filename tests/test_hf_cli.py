"""`llm-jax hf import` end to end: a GPT-2-shaped Hugging Face directory with its tokenizer becomes a file that
`llm-jax sample` reads, and greedy generation of 20 tokens equals `transformers`' generate."""

import subprocess
import sys

import pytest
import torch
import transformers

from tests.conftest import REPO
from tests.test_hf_tokenizer import hf_dir  # noqa: F401 (the fixture: a byte-level BPE trained on the corpus)

PROMPT = "ROMEO:"


@pytest.fixture(scope="module")
def gpt2_dir(hf_dir):  # noqa: F811
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(hf_dir / "tokenizer.json"))
    end = tok.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=600, n_positions=64,
                                  bos_token_id=end, eos_token_id=end, initializer_range=0.2)
    transformers.GPT2LMHeadModel(cfg).eval().save_pretrained(hf_dir)
    return hf_dir, end


def test_import_then_sample_equals_transformers_greedy_generation(gpt2_dir, tmp_path):
    directory, end = gpt2_dir
    out = tmp_path / "gpt2.safetensors"
    done = subprocess.run([sys.executable, "-m", "llm_jax", "hf", "import", f"--from={directory}", f"--out={out}"],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "decoder model" in done.stdout
    again = subprocess.run([sys.executable, "-m", "llm_jax", "hf", "import", f"--from={directory}", f"--out={out}"],
                           cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 2 and "--overwrite" in again.stderr

    sampled = subprocess.run([sys.executable, "-m", "llm_jax", "sample", f"--workdir={out}", f"--prompt={PROMPT}",
                              "--max-new-tokens=20", "--temperature=0"], cwd=REPO, capture_output=True, text=True)
    assert sampled.returncode == 0, sampled.stderr[-3000:]

    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"))
    model = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
    ids = [end, *tok(PROMPT, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        new = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False, pad_token_id=end)[0, len(ids):]
    new = new.tolist()
    new = new[: new.index(end)] if end in new else new
    assert len(new) >= 5, "the reference should generate some tokens before an <|endoftext|>"
    assert f"--- sample 1 ---\n{PROMPT}{tok.decode(new)}" in sampled.stdout, sampled.stdout[-1500:]


def test_a_directory_without_config_is_refused(tmp_path):
    done = subprocess.run([sys.executable, "-m", "llm_jax", "hf", "import", f"--from={tmp_path}",
                           f"--out={tmp_path / 'x.safetensors'}"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and "has no config.json" in done.stderr
