"""runtime.compilation_cache_dir: the first run fills the persistent cache; a second run of the same config
compiles nothing new (every program comes from the cache), and without the key nothing is written."""

import subprocess
import sys

from tests.conftest import REPO, TRAIN_CONFIG

TINY = ["--config.model.num_layers=1", "--config.model.d_model=32", "--config.model.num_heads=2",
        "--config.model.mlp_dim=64", "--config.train.seq_len=32", "--config.train.global_batch=8",
        "--config.train.steps=2", "--config.train.eval_batches=1", "--config.sample.max_new_tokens=0",
        "--config.checkpoint.every_steps=0"]


def _train(workdir, *extra: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "llm_jax", "train", f"--config={TRAIN_CONFIG}:model=tiny,topology=cpu",
                          f"--workdir={workdir}", *TINY, *extra], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_a_second_run_takes_every_program_from_the_cache(tmp_path):
    cache = tmp_path / "cache"
    flags = [f"--config.runtime.compilation_cache_dir={cache}", "--config.runtime.compilation_cache_min_compile_s=0"]
    _train(tmp_path / "first", *flags)
    first = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert any("train" in name for name in first), sorted(first)[:10]
    _train(tmp_path / "second", *flags)
    # A program compiled again would be written again (a new modification time): none is.
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == first, "the second run compiled again"
    _train(tmp_path / "third", "--config.train.seq_len=16", *flags)  # another shape: new programs are added
    assert {p.name for p in cache.iterdir()} > set(first)
