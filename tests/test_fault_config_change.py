"""Fault: the config changes between a run and its resume. A change of the model, the tokenizer or the shape of
the saved state is refused with the diff (exit 2) and no checkpoint is touched; other changes are shown and
recorded, and the run resumes."""

import json

import jax
import pytest

from llm_jax.train.loop import train
from llm_jax.train.resume import ResumeRefusedError
from tests.conftest import TRAIN_CONFIG, small_config
from tests.test_cli import llm_jax

REPRO = [f"--config={TRAIN_CONFIG}:model=tiny,topology=cpu", "--config.model.num_layers=2",
         "--config.model.d_model=64", "--config.model.mlp_dim=128", "--config.train.seq_len=32",
         "--config.train.global_batch=8", "--config.sample.max_new_tokens=0", "--config.train.log_every=1",
         "--config.checkpoint.every_steps=2", "--config.train.eval_batches=2"]


def _steps(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _listing(workdir):
    """Every file under checkpoints/ with its size and modification time: 'untouched' means equal listings."""
    return {str(p.relative_to(workdir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted((workdir / "checkpoints").rglob("*"))}


def test_a_changed_optimizer_structure_exits_2_with_the_diff_and_keeps_every_checkpoint(tmp_path):
    w = tmp_path / "W"
    assert llm_jax("train", *REPRO, f"--workdir={w}", "--config.train.steps=4").returncode == 0
    assert _steps(w) == [2, 4]
    before = _listing(w)

    out = llm_jax("train", *REPRO, f"--workdir={w}", "--config.train.steps=9", "--config.checkpoint.every_steps=3",
                  "--config.optimizer.clip_norm=0")
    assert out.returncode == 2, out.stderr[-3000:]
    error = out.stderr.strip().splitlines()
    assert len(error) == 1, out.stderr
    assert "optimizer.clip_norm: 1.0 -> 0.0" in error[0] and "train.steps: 4 -> 9" in error[0]
    assert "only in the checkpoint: opt_state.1" in error[0] and "only in this run's state: opt_state.0" in error[0]
    assert "checkpoint.init_from=" in error[0] and "new --workdir" in error[0]
    assert "step 1/" not in out.stdout, "nothing may train"
    assert _listing(w) == before, "a refused resume changes nothing under checkpoints/"

    out = llm_jax("train", *REPRO, f"--workdir={w}", "--config.train.steps=9", "--config.checkpoint.every_steps=3")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from {w / 'checkpoints' / '4'}: step 4" in out.stdout
    assert "config changes since that checkpoint: checkpoint.every_steps: 2 -> 3, train.steps: 4 -> 9" in out.stdout
    record = json.loads((w / "run.json").read_text())
    assert record["resumed_from"] == 4
    assert record["config_changes"] == {"checkpoint.every_steps": [2, 3], "train.steps": [4, 9]}
    assert 4 in _steps(w) and 9 in _steps(w)


def test_a_changed_model_key_is_refused_even_when_shapes_stay_the_same(tmp_path):
    cfg = small_config()
    cfg.train.steps, cfg.checkpoint.every_steps = 2, 2
    train(cfg, tmp_path, jax.devices()[:1])
    before = _listing(tmp_path)
    for key, value in (("rope_theta", 500000.0), ("norm_eps", 1e-6), ("num_layers", 3)):
        changed = small_config()
        changed.model[key], changed.train.steps = value, 4
        with pytest.raises(ResumeRefusedError, match=rf"trained with another model: model\.{key}: "
                                                     rf"{json.dumps(cfg.model[key])} -> {json.dumps(value)}\."):
            train(changed, tmp_path, jax.devices()[:1])
        assert _listing(tmp_path) == before
    # How the same weights are computed is not another model: a run may switch attention or remat on resume.
    how = small_config()
    how.train.steps, how.model.attention, how.model.attention_block_kv, how.model.remat = 4, "chunked", 16, "full"
    train(how, tmp_path, jax.devices()[:1])
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["resumed_from"] == 2
    assert {"model.attention", "model.attention_block_kv", "model.remat"} <= record["config_changes"].keys()
    assert 4 in _steps(tmp_path)
