"""Every test sees 8 CPU devices, so real 2-D and 3-D meshes are exercised without accelerators."""

import os

# Must happen before JAX initialises its backend, i.e. before any test module imports jax.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAIN_CONFIG = str(REPO / "configs" / "train.py")


def small_config():
    """A small, fast config: 2 layers, width 64, seq 32, batch 8, on whatever mesh the test sets."""
    from llm_jax.config import load_config

    return load_config(f"{TRAIN_CONFIG}:model=tiny,topology=cpu", [
        "model.num_layers=2", "model.d_model=64", "model.num_heads=4", "model.mlp_dim=128",
        "model.max_seq_len=64", "train.seq_len=32", "train.global_batch=8", "train.steps=5",
        "train.log_every=1", "train.eval_batches=2", "optimizer.warmup_steps=2",
        "sample.max_new_tokens=0",  # compiling the sampler costs seconds; tests that read samples turn it on
    ])


@pytest.fixture
def tiny_config():
    return small_config()
