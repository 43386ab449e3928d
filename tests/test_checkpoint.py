"""Checkpoints: a resumed run continues with the same batches and bitwise the same losses, also after SIGKILL or
SIGTERM;
a checkpoint from another tokenizer is refused."""

import json
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import pytest

from llm_jax.checkpoint.manager import CheckpointError
from llm_jax.train.loop import train
from tests.conftest import REPO, TRAIN_CONFIG, small_config
from tests.test_cli import SMALL


def _config(steps=8, every=4, **data):
    cfg = small_config()
    cfg.train.steps, cfg.checkpoint.every_steps, cfg.train.log_every = steps, every, 1
    for k, v in data.items():
        cfg.data[k] = v
    return cfg


def test_resume_continues_with_the_same_batches_and_losses(tmp_path):
    devices = jax.devices()[:1]
    whole = train(_config(), tmp_path / "whole", devices)
    assert sorted(int(p.name) for p in (tmp_path / "whole" / "checkpoints").iterdir()) == [4, 8]

    run = tmp_path / "run"
    train(_config(), run, devices)
    shutil.rmtree(run / "checkpoints" / "8")  # as if the run had died between the saves at steps 4 and 8
    resumed = train(_config(workers=1), run, devices)  # with a worker process this time
    assert resumed.start_step == 4
    assert resumed.train_losses == whole.train_losses[4:], "resumed losses must equal the uninterrupted run's"
    assert resumed.eval_loss == whole.eval_loss
    # The metrics log holds each step once: what the first attempt logged after step 4 was dropped.
    steps = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 8


def test_resume_with_another_tokenizer_is_refused(tmp_path):
    from llm_jax.data.tokenizer_train import train_sentencepiece

    devices = jax.devices()[:1]
    train(_config(steps=2, every=2), tmp_path / "run", devices)
    corpus = tmp_path / "c.txt"
    corpus.write_text("some words to train a tokenizer on, and a few more words.\n" * 200)
    tok = train_sentencepiece([str(corpus)], 300, "bpe", tmp_path / "tok")
    cfg = _config(steps=4, every=2, tokenizer="sentencepiece", tokenizer_path=str(tok.model_path))
    with pytest.raises(CheckpointError, match="trained with tokenizer"):
        train(cfg, tmp_path / "run", devices)


def _losses(workdir):
    return {r["step"]: r["loss"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
            if "loss" in r and "eval_loss" not in r}


def test_sigkill_sigterm_and_restarts_give_bitwise_the_same_losses(tmp_path):
    args = [sys.executable, "-m", "llm_jax", "train", f"--config={TRAIN_CONFIG}:model=tiny,topology=cpu", *SMALL,
            "--config.train.steps=30", "--config.train.log_every=1", "--config.checkpoint.every_steps=5"]
    subprocess.run([*args, f"--workdir={tmp_path / 'whole'}"], cwd=REPO, check=True, capture_output=True)

    run = tmp_path / "run"
    proc = subprocess.Popen([*args, f"--workdir={run}"], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if any(s >= 10 for s in _saved_if_any(run)):  # complete checkpoints only
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(_saved(run))

    # Restarted, it resumes; a SIGTERM while it compiles its first step saves a checkpoint after that step, exit 0.
    proc = subprocess.Popen([*args, f"--workdir={run}"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    # "tokenizer:" ends the opening lines; the signal handlers are set right after them.
    while not re.search(r"resumed from[\s\S]*tokenizer:", (run / "train.log").read_text()):
        assert time.time() < deadline and proc.poll() is None, "the restarted run did not resume"
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    stopped = int(re.search(rf"stopped by signal {int(signal.SIGTERM)} after step (\d+)", stdout)[1])
    assert killed_at < stopped < 30 and stopped in _saved(run)
    assert max(_losses(run)) == stopped, "every step up to the stop is logged, none after"

    out = subprocess.run([*args, f"--workdir={run}"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from {run / 'checkpoints' / str(stopped)}" in out.stdout
    whole, resumed = _losses(tmp_path / "whole"), _losses(run)
    assert sorted(resumed) == list(range(1, 31))
    assert resumed == whole, "every step's loss must be bitwise equal to the uninterrupted run's"


def test_a_checkpoint_of_another_model_names_the_mismatched_parameters(tmp_path):
    devices = jax.devices()[:1]
    train(_config(steps=2, every=2), tmp_path, devices)
    cfg = _config(steps=4, every=2)
    cfg.model.mlp_dim = 96
    with pytest.raises(CheckpointError, match=r"trained with another model: model\.mlp_dim: 128 -> 96\. "):
        train(cfg, tmp_path, devices)


def _saved_if_any(workdir):
    return _saved(workdir) if (workdir / "checkpoints").exists() else []


def _saved(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_keep_the_last_k_plus_every_m_th_and_save_by_the_clock(tmp_path):
    cfg = _config(steps=8, every=0)  # no step rule: the clock (due after every step here) and the end
    cfg.checkpoint.every_minutes, cfg.checkpoint.keep, cfg.checkpoint.keep_every = 1e-9, 2, 4
    train(cfg, tmp_path, jax.devices()[:1])
    assert _saved(tmp_path) == [4, 7, 8]


def _disk_full(limit_bytes, command):
    """`command` run with files unable to grow past `limit_bytes` (writes fail with EFBIG, like a full disk).
    A small launcher sets the limit and execs, so the test process never forks with JAX's threads running."""
    launcher = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "  # else: killed
                f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes}, {limit_bytes})); "
                "os.execv(sys.argv[1], sys.argv[1:])")
    return [sys.executable, "-c", launcher, *command]


def test_a_failed_write_is_reported_and_the_previous_checkpoint_stays_usable(tmp_path):
    args = [sys.executable, "-m", "llm_jax", "train", f"--config={TRAIN_CONFIG}:model=tiny,topology=cpu", *SMALL,
            "--config.train.log_every=1", "--config.checkpoint.every_steps=2", f"--workdir={tmp_path}"]
    subprocess.run([*args, "--config.train.steps=4"], cwd=REPO, check=True, capture_output=True)
    # The tiny model's checkpoint data file is a few MB; the run's logs stay far below 200 kB.
    out = subprocess.run(_disk_full(200_000, [*args, "--config.train.steps=8"]), cwd=REPO, capture_output=True,
                         text=True)
    assert out.returncode == 1, out.stderr[-3000:]
    assert f"writing checkpoint {tmp_path / 'checkpoints' / '6'} failed" in out.stderr
    assert "File too large" in out.stderr and f"{tmp_path / 'checkpoints' / '4'}, is intact" in out.stderr
    assert _saved(tmp_path) == [2, 4]

    from llm_jax.checkpoint.params import abstract_like, find_step_dir, restore_params, saved_tree

    step_dir = find_step_dir(tmp_path)  # the latest complete checkpoint is the one before the failure, and loads
    abstract = abstract_like(saved_tree(step_dir)["params"], jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    assert step_dir.name == "4" and jax.tree.leaves(restore_params(step_dir, abstract))


def _on_mesh(data, fsdp, tensor, devices):
    cfg = _config(steps=2, every=2)
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = data, fsdp, tensor
    return cfg, devices


def test_a_checkpoint_from_a_2x2x2_mesh_restores_on_other_meshes_with_equal_values(tmp_path):
    import numpy as np

    from llm_jax.checkpoint.manager import Checkpointer
    from llm_jax.train.setup import build_run

    cfg, devices = _on_mesh(2, 2, 2, jax.devices())
    train(cfg, tmp_path, devices)
    saved = None
    for data, fsdp, tensor, n in ((2, 2, 2, 8), (1, 8, 1, 8), (4, 1, 2, 8), (1, 1, 1, 1)):
        cfg, devices = _on_mesh(data, fsdp, tensor, jax.devices()[:n])
        run = build_run(cfg, devices)
        ckpt = Checkpointer(tmp_path, cfg.checkpoint)
        state, data_state = ckpt.restore(2, run.state, run.state_sharding)
        ckpt.close()
        run.data.train.close()
        leaves = jax.tree.leaves((state.step, state.params, state.opt_state, state.guard))
        targets = jax.tree.leaves((run.state_sharding.step, run.state_sharding.params, run.state_sharding.opt_state,
                                   run.state_sharding.guard))
        assert all(x.sharding == s for x, s in zip(leaves, targets, strict=True)), f"placed for mesh {run.mesh}"
        values = [np.asarray(x) for x in leaves]
        if saved is None:  # as written on (2, 2, 2)
            saved = values
            assert data_state == {"examples": 16}
            assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated for x in leaves)
            continue
        for a, b in zip(saved, values, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"mesh {dict(run.mesh.shape)}")
