"""The `llm-jax` command end to end, in a subprocess, as a user runs it."""

import json
import math
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO, TRAIN_CONFIG

SMALL = ["--config.model.num_layers=2", "--config.model.d_model=64", "--config.model.mlp_dim=128",
         "--config.train.seq_len=32", "--config.train.global_batch=8", "--config.train.eval_batches=2",
         "--config.optimizer.warmup_steps=2", "--config.sample.max_new_tokens=0"]


def llm_jax(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the CLI must set up devices itself
    return subprocess.run([sys.executable, "-m", "llm_jax", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_help_lists_subcommands():
    out = llm_jax("--help")
    assert out.returncode == 0
    assert "train" in out.stdout and "usage: llm-jax" in out.stdout


def test_train_on_a_2x2x2_mesh_end_to_end(tmp_path):
    out = llm_jax("train", f"--config={TRAIN_CONFIG}:model=tiny,topology=cpu_8dev", f"--workdir={tmp_path}",
                  "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2",
                  "--config.train.steps=6", "--config.train.log_every=2", *SMALL, "--config.sample.max_new_tokens=16")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 2}" in out.stdout
    assert "step 6/6 | loss" in out.stdout and "tok/s" in out.stdout and "ETA" in out.stdout
    assert "unigram baseline" in out.stdout and "--- sample ---" in out.stdout

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 4, 6]  # the first step (with compile time), then every 2
    assert train[0]["compile_s"] > 0
    for key in ("loss", "lr", "grad_norm", "tokens"):
        assert all(key in r for r in train), key
    assert all(r["tokens_per_s"] > 0 for r in train[1:])
    evals = [r for r in records if "eval_loss" in r]
    assert len(evals) == 1 and evals[0]["step"] == 6
    # Six steps learn something (below the uniform guess, ln V) but not yet what the best context-free model knows.
    unigram = float(re.search(r"unigram baseline loss: ([\d.]+)", out.stdout).group(1))
    vocab = json.loads((tmp_path / "config.json").read_text())["model"]["vocab_size"]
    assert unigram < evals[0]["eval_loss"] < math.log(vocab), (unigram, evals[0]["eval_loss"], vocab)
    sample = (tmp_path / "samples.txt").read_text()
    assert sample.startswith("ROMEO:\n") and len(sample) > len("ROMEO:\n") + 1  # generated on the sharded mesh
    assert json.loads((tmp_path / "config.json").read_text())["mesh"]["tensor"] == 2
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_nan_loss_stops_the_run_naming_the_step(tmp_path):
    out = llm_jax("train", f"--config={TRAIN_CONFIG}:model=tiny,topology=cpu", f"--workdir={tmp_path}",
                  "--config.train.steps=20", "--config.optimizer.lr=1e30", "--config.optimizer.clip_norm=0.0",
                  *[a for a in SMALL if "warmup" not in a], "--config.optimizer.warmup_steps=0")
    assert out.returncode == 1
    assert re.search(r"error: step \d+ diverged \(loss .*nothing from it was saved", out.stderr), out.stderr


def test_bench_prints_figures_and_a_json_last_line():
    out = llm_jax("bench", f"--config={TRAIN_CONFIG}:model=nano,topology=cpu", "--steps=2", "--warmup=1",
                  "--config.train.seq_len=32", "--config.train.global_batch=4", "--profile")
    assert out.returncode == 0, out.stderr[-3000:]
    # --profile: the traced steps' op time by kind; the matmuls are found, and the shares add up.
    shares = dict(re.findall(r"^  (matmul|transpose/copy|collective|elementwise/other) +[\d.]+ ms +([\d.]+)%$",
                             out.stdout, re.M))
    assert set(shares) == {"matmul", "transpose/copy", "collective", "elementwise/other"}, out.stdout
    assert float(shares["matmul"]) > 5 and float(shares["collective"]) == 0  # one device: no collectives
    assert abs(sum(map(float, shares.values())) - 100) < 0.5 and "slowest ops: " in out.stdout
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result) == {"tokens_per_s", "step_time_s", "compile_s", "flops_per_token", "mfu", "peak_gflops",
                           "system_time_fraction", "minor_faults_per_step"}
    # The kernel's share of the timed steps, and their page faults: a fraction and a count, each at least 0.
    assert 0 <= result["system_time_fraction"] < 1 and result["minor_faults_per_step"] >= 0
    # MFU is the model FLOP/s (FLOPs per token x tokens/s, tokens/s = batch x seq_len / step time) over the peak.
    assert result["tokens_per_s"] == pytest.approx(4 * 32 / result["step_time_s"], rel=1e-9)
    assert result["mfu"] == pytest.approx(
        result["flops_per_token"] * result["tokens_per_s"] / (result["peak_gflops"] * 1e9), rel=1e-9)
    # nano: 4 layers, width 128, MLP 512 (GELU), vocab 320, 4 heads x 32: 6 N + 12 L H K T
    n_matmul = 4 * (128 * 32 * 16 + 2 * 128 * 512) + 128 * 320
    assert result["flops_per_token"] == 6 * n_matmul + 12 * 4 * 4 * 32 * 32


def test_second_run_in_a_workdir_resumes_and_one_without_checkpoints_keeps_the_first(tmp_path):
    args = ["train", f"--config={TRAIN_CONFIG}:model=tiny,topology=cpu", f"--workdir={tmp_path}", *SMALL]
    assert llm_jax(*args, "--config.train.steps=2").returncode == 0
    first = (tmp_path / "metrics.jsonl").read_text()
    out = llm_jax(*args, "--config.train.steps=4")  # a longer run in the same workdir continues the first
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resumed from" in out.stdout and "step 2" in out.stdout and "step 3/4" in out.stdout
    assert (tmp_path / "metrics.jsonl").read_text().startswith(first)
    assert not (tmp_path / "previous_runs").exists()

    for p in (tmp_path / "checkpoints").iterdir():  # without checkpoints, a run starts afresh ...
        p.rename(tmp_path / f"moved-{p.name}")
    all_logs = (tmp_path / "metrics.jsonl").read_text()
    out = llm_jax(*args, "--config.train.steps=2")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "moved its files to" in out.stdout  # ... and keeps the earlier run's files
    assert (tmp_path / "previous_runs" / "1" / "metrics.jsonl").read_text() == all_logs


def test_config_lists_every_key_with_its_value_range_and_meaning():
    from llm_jax.config.base import KEYS

    out = llm_jax("config", f"--config={TRAIN_CONFIG}:model=nano,topology=cpu", "--config.optimizer.lr=3e-4")
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert [line.split(" = ")[0] for line in lines] == list(KEYS)
    assert "optimizer.lr = 0.0003  # peak learning rate; allowed: > 0" in lines
    assert "optimizer.b1 = 0.9  # Adam's first-moment decay rate; allowed: in [0, 1)" in lines
    assert "model.norm = 'layernorm'  # normalisation layer; allowed: one of: rmsnorm, layernorm" in lines  # nano's
