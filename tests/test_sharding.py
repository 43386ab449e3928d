"""Sharded training on real 8-device meshes matches the 1-device loss trajectory."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from llm_jax.config import ConfigError, validate
from llm_jax.config.validate import finalize
from llm_jax.models import build_model
from llm_jax.parallel.mesh import make_mesh
from llm_jax.parallel.sharding import check_rules_cover, logical_shardings
from llm_jax.train import loop
from llm_jax.train.state import abstract_params


def _run(cfg, mesh_shape, tmp_path, name):
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = mesh_shape
    devices = int(np.prod(mesh_shape))
    cfg.runtime.num_cpu_devices = 8
    assert jax.device_count() == 8, "tests/conftest.py must give JAX 8 CPU devices"
    if devices == 1:
        cfg.mesh.data = 1
    return loop.train(cfg, tmp_path / name, devices=jax.devices()[:devices]).train_losses


@pytest.fixture(scope="module")
def reference_losses(tmp_path_factory):
    from tests.conftest import small_config
    return _run(small_config(), (1, 1, 1), tmp_path_factory.mktemp("ref"), "one_device")


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 4, 2)])
def test_sharded_training_matches_one_device(mesh_shape, reference_losses, tmp_path):
    from tests.conftest import small_config
    losses = _run(small_config(), mesh_shape, tmp_path, "sharded")
    assert len(losses) == len(reference_losses) == 5
    np.testing.assert_allclose(losses, reference_losses, rtol=1e-4,
                               err_msg=f"mesh {mesh_shape} diverged from the 1-device run")
    assert losses[-1] < losses[0], "the loss should fall over 5 steps"


@pytest.mark.parametrize("scan", [True, False])
def test_params_are_sharded_as_the_rules_say(tiny_config, scan):
    tiny_config.model.scan_layers = scan
    cfg = finalize(tiny_config, 259)
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 2, 2, 2
    mesh = make_mesh(validate(cfg, 8))
    boxed = abstract_params(build_model(cfg.model), cfg.train.seq_len)
    shardings = logical_shardings(boxed, mesh, cfg.sharding.rules)["layers" if scan else "layer_1"]
    # Megatron-style: heads and MLP hidden over tensor, the embed (d_model) dim over fsdp, layers whole.
    layers = (None,) if scan else ()
    assert tuple(shardings["attn"]["wq"].spec) == (*layers, "fsdp", "tensor", None)
    assert tuple(shardings["attn"]["wo"].spec) == (*layers, "tensor", None, "fsdp")
    assert tuple(shardings["mlp"]["wi_gate"].spec) == (*layers, "fsdp", "tensor")


def test_parameter_without_rule_is_an_error(tiny_config):
    cfg = finalize(tiny_config, 259)
    boxed = abstract_params(build_model(cfg.model), cfg.train.seq_len)
    rules = tuple(r for r in cfg.sharding.rules if r[0] != "mlp")
    with pytest.raises(ConfigError, match=r"'mlp'.*sharding.rules"):
        check_rules_cover(boxed, rules)


def test_unannotated_parameter_is_an_error():
    class Bare(nn.Module):
        @nn.compact
        def __call__(self, x):
            return x * self.param("w", nn.initializers.ones, (3,))

    boxed = jax.eval_shape(lambda: Bare().init(jax.random.key(0), np.ones(3))["params"])
    with pytest.raises(ConfigError, match="parameter 'w' has no logical axis names"):
        check_rules_cover(boxed, ())


def test_indivisible_parameter_names_the_tensor(tiny_config):
    cfg = finalize(tiny_config, 259)
    cfg.model.mlp_dim = 130  # not divisible by a 4-way tensor axis
    mesh = make_mesh((1, 2, 4))
    boxed = abstract_params(build_model(cfg.model), cfg.train.seq_len)
    with pytest.raises(ConfigError, match=r"layer_0/mlp/wi_gate.*\(64, 130\).*4 ways"):
        logical_shardings(boxed, mesh, cfg.sharding.rules)
