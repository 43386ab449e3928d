"""The encoder (BERT) and encoder-decoder (T5) families through the whole trainer: a (2,2,2) mesh equals one
device, `llm-jax train` beats the unigram baseline, a SIGKILLed run resumes to bitwise the same losses, exported
names are one per layer of every stack, `llm-jax sample` works for T5, and the planner's FLOPs follow the family."""

import json
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from llm_jax.config import load_config
from llm_jax.data.tokenizer import make_tokenizer
from llm_jax.monitor.hardware import hardware
from llm_jax.objectives import make_objective
from llm_jax.train import loop, plan
from tests.conftest import REPO, TRAIN_CONFIG

PRESETS = {"encoder": "bert_mini", "encoder_decoder": "t5_mini"}
SMALL = ["model.num_layers=2", "model.d_model=64", "model.num_heads=4",
         "model.mlp_dim=128", "model.max_seq_len=64", "train.seq_len=64", "train.global_batch=16",
         "optimizer.warmup_steps=10", "optimizer.lr=3e-3", "sample.max_new_tokens=16"]
STEPS = 150  # enough for both to beat their unigram baselines clearly


def _small(family: str) -> list[str]:
    return SMALL + (["model.num_decoder_layers=2"] if family == "encoder_decoder" else [])


def _config(family, *overrides):
    return load_config(f"{TRAIN_CONFIG}:model={PRESETS[family]},topology=cpu", [*_small(family), *overrides])


@pytest.mark.parametrize("family", sorted(PRESETS))
def test_a_2x2x2_mesh_trains_as_one_device(family, tmp_path):
    def losses(shape, name):
        cfg = _config(family, "train.steps=5", "train.log_every=1", "train.global_batch=8", "train.seq_len=32",
                      "sample.max_new_tokens=0")
        if family == "encoder":  # BERT's learned position table (the preset itself uses rope)
            cfg.model.positions = "learned"
        cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = shape
        devices = jax.devices()[: int(np.prod(shape))]
        return loop.train(cfg, tmp_path / name, devices=devices).train_losses

    one, mesh = losses((1, 1, 1), "one"), losses((2, 2, 2), "mesh")
    assert len(one) == 5
    np.testing.assert_allclose(mesh, one, rtol=1e-4, err_msg=f"{family}: the (2,2,2) mesh diverged from 1 device")
    assert one[-1] < one[0]


def _cli(family, workdir, *extra):
    return [sys.executable, "-m", "llm_jax", "train", f"--config={TRAIN_CONFIG}:model={PRESETS[family]},topology=cpu",
            *(f"--config.{o}" for o in _small(family)), f"--config.train.steps={STEPS}", "--config.train.log_every=1",
            "--config.checkpoint.every_steps=50", f"--workdir={workdir}", *extra]


def _losses(workdir):
    return {r["step"]: r["loss"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
            if "loss" in r and "eval_loss" not in r}


def _saved(workdir):
    root = workdir / "checkpoints"
    return sorted(int(p.name) for p in root.glob("*") if p.name.isdigit() and (p / "llm_jax_files.json").is_file()) \
        if root.is_dir() else []


@pytest.fixture(scope="module", params=sorted(PRESETS))
def trained(request, tmp_path_factory):
    """One whole run per family, shared by the tests that read it."""
    family, workdir = request.param, tmp_path_factory.mktemp(request.param) / "whole"
    out = subprocess.run(_cli(family, workdir), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return family, workdir, out.stdout


def test_training_beats_the_unigram_baseline(trained):
    family, _, stdout = trained
    m = re.search(r"validation loss ([\d.]+) \(perplexity [\d.]+, [\d.]+ bits per byte, accuracy ([\d.]+)%\) \| "
                  r"unigram baseline ([\d.]+) \(accuracy ([\d.]+)%\)", stdout)
    assert m, stdout[-2000:]
    loss, accuracy, baseline, baseline_accuracy = map(float, m.groups())
    assert loss < baseline - 0.2, f"{family}: validation loss {loss} is not clearly below the unigram {baseline}"
    assert accuracy > baseline_accuracy + 4, f"{family}: accuracy {accuracy}% vs always the commonest token"
    assert ("objective masked_lm" if family == "encoder" else "objective span_corruption") in stdout


# The encoder-decoder only: its examples (span corruption) and two stacks are the most state to resume; the
# encoder's masked examples are resumed by the same code (tests/test_objectives.py checks them at any resume point).
@pytest.mark.parametrize("trained", ["encoder_decoder"], indirect=True)
def test_a_sigkilled_run_resumes_to_bitwise_the_same_losses(trained, tmp_path):
    family, whole, _ = trained
    run = tmp_path / "run"
    proc = subprocess.Popen(_cli(family, run), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not any(s >= 50 for s in _saved(run)):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(_saved(run))
    assert killed_at < STEPS
    out = subprocess.run(_cli(family, run), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from {run / 'checkpoints' / str(killed_at)}" in out.stdout
    assert _losses(run) == _losses(whole), f"{family}: losses after the resume differ from the uninterrupted run"


def test_exported_names_are_one_per_layer_of_every_stack(trained, tmp_path):
    from llm_jax.checkpoint.safetensors import read

    family, whole, _ = trained
    out = tmp_path / "model.safetensors"
    done = subprocess.run([sys.executable, "-m", "llm_jax", "export", f"--workdir={whole}", f"--out={out}"],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    names = set(read(out)[0])
    stacks = ("",) if family == "encoder" else ("encoder.", "decoder.")
    for stack in stacks:
        for i in (0, 1):
            assert f"{stack}layers.{i}.attn.wq" in names, sorted(names)
        assert not any(n.startswith(f"{stack}layers.2.") for n in names)
    if family == "encoder_decoder":
        assert {"decoder.layers.0.cross.wk", "decoder.layers.1.cross.wk", "encoder.relative_bias"} <= names
    else:
        assert {"embedding", "type_embedding", "mlm_head.bias"} <= names
    assert not any("layer_" in n or n.startswith("layers.attn") for n in names), sorted(names)


def test_sample_continues_a_prompt_with_t5_and_refuses_bert(trained):
    family, whole, _ = trained
    out = subprocess.run([sys.executable, "-m", "llm_jax", "sample", f"--workdir={whole}", "--prompt=ROMEO:",
                          "--max-new-tokens=12", "--temperature=0"], cwd=REPO, capture_output=True, text=True)
    if family == "encoder_decoder":
        assert out.returncode == 0, out.stderr[-3000:]
        assert "--- sample 1 ---\nROMEO:" in out.stdout
    else:
        assert out.returncode == 2 and "does not generate text" in out.stdout + out.stderr


@pytest.mark.parametrize("family", sorted(PRESETS))
def test_the_planner_counts_the_familys_flops(family):
    """Model FLOPs per device per step = the family's FLOPs per token (checked against hand counts in
    test_encoder.py / test_encoder_decoder.py) x tokens / devices; and the step compiles for 8 devices."""
    from llm_jax.models import flops_per_token

    cfg = _config(family, "mesh.fsdp=2", "mesh.tensor=2")
    p = plan.plan(cfg, plan.Target(8), hardware("cpu", 8, "float32"), jax.devices()[:8])
    target_len = make_objective(p.cfg, make_tokenizer("byte")).target_len
    assert (target_len > 0) == (family == "encoder_decoder")
    per_token = flops_per_token(p.cfg.model, 64, target_len)
    assert p.model_flops == pytest.approx(per_token * 16 * 64 / 8, rel=1e-9)
    assert p.cost.matmul_flops > 0 and p.fits


def test_init_from_a_run_of_the_other_family_is_refused_before_anything_is_written(trained, tmp_path):
    from llm_jax.config import ConfigError

    family, whole, _ = trained
    other = "encoder_decoder" if family == "encoder" else "encoder"
    cfg = _config(other, "train.steps=2", f"checkpoint.init_from={whole}")
    with pytest.raises(ConfigError, match=r"checkpoint\.init_from: .* holds another model"):
        loop.train(cfg, tmp_path / "new", devices=jax.devices()[:1])
    assert not (tmp_path / "new").exists()
