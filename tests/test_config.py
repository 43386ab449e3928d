"""Config loading, overrides, finalize and validate: every mistake is one ConfigError line that names the key."""

import math
import os
import pathlib
import subprocess
import sys
import time

import flax.linen as nn
import jax
import pytest

from llm_jax.config import ConfigError, base_config, load_config, validate
from llm_jax.config.load import load_module, set_key
from llm_jax.config.validate import finalize, uses_dcn
from llm_jax.data.tokenizer import ByteTokenizer
from llm_jax.models import build_model
from llm_jax.train.state import abstract_params

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAIN_CONFIG = str(REPO / "configs" / "train.py")
VOCAB = ByteTokenizer.vocab_size
MODEL_PRESETS = ("tiny", "nano", "gpt2_small", "llama_1b", "llama3_8b")


def _load(overrides=(), model="tiny", topology="cpu"):
    return load_config(f"{TRAIN_CONFIG}:model={model},topology={topology}", list(overrides))


def _check(overrides=(), num_devices=8, model="tiny", topology="cpu"):
    """Load, finalize and validate; return the resolved mesh shape."""
    return validate(finalize(_load(overrides, model, topology), VOCAB), num_devices)


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert message.strip(), "a ConfigError must say something"
    assert "\n" not in message, f"ConfigError messages must be one line, got {message!r}"
    return message


# ---------------------------------------------------------------- loading and overrides


def test_presets_and_overrides_are_applied():
    cfg = _load(["train.steps=7", "optimizer.lr=3e-4", "model.qk_norm=True", "model.rope_theta=20000"])
    assert cfg.train.steps == 7 and isinstance(cfg.train.steps, int)
    assert cfg.optimizer.lr == pytest.approx(3e-4)
    assert cfg.model.qk_norm is True
    assert cfg.model.rope_theta == 20000.0 and isinstance(cfg.model.rope_theta, float)
    # Every key of the preset reached the config (gpt2_small differs from the base defaults in many keys).
    gpt2 = _load(model="gpt2_small")
    for key, value in load_module(REPO / "configs" / "models.py").PRESETS["gpt2_small"].items():
        assert gpt2.model[key] == value, key
    assert gpt2.model.d_model != base_config().model.d_model
    assert (cfg.model_preset, cfg.topology_preset) == ("tiny", "cpu")


def test_lowercase_booleans_are_accepted():
    # load.py says it follows ml_collections' config_flags syntax, where --config.x=true/false are booleans,
    # and its own error text asks for "true/false".
    assert _load(["model.qk_norm=true"]).model.qk_norm is True
    assert _load(["model.tie_embeddings=false"]).model.tie_embeddings is False


def test_unknown_key_names_it_and_suggests_the_real_one():
    message = _error(_load, ["train.stepz=3"])
    assert "train.stepz" in message
    assert "train.steps" in message


def test_unknown_section_names_the_key():
    message = _error(_load, ["trian.steps=3"])
    assert "trian.steps" in message


def test_override_without_value_is_an_error():
    message = _error(_load, ["train.steps"])
    assert "train.steps" in message


@pytest.mark.parametrize("override, key", [
    ("train.steps=abc", "train.steps"),
    ("train.steps=1.5", "train.steps"),
    ("optimizer.lr=fast", "optimizer.lr"),
    ("model.tie_embeddings=maybe", "model.tie_embeddings"),
])
def test_wrong_type_names_the_key(override, key):
    message = _error(_load, [override])
    assert key in message


def test_unknown_model_preset_lists_the_available_ones():
    message = _error(_load, model="nope")
    assert "nope" in message
    for name in MODEL_PRESETS:
        assert name in message


def test_unknown_topology_preset_lists_the_available_ones():
    message = _error(_load, topology="nowhere")
    assert "nowhere" in message
    assert "cpu" in message and "cpu_8dev" in message


# ---------------------------------------------------------------- mesh


def test_mesh_product_must_match_device_count():
    message = _error(_check, ["mesh.data=3"], num_devices=8)
    assert "mesh.data=3" in message
    assert "mesh.fsdp" in message and "mesh.tensor" in message
    assert "8" in message


def test_minus_one_axis_is_inferred():
    assert _check(["mesh.data=-1", "mesh.fsdp=2", "mesh.tensor=2"], num_devices=8) == (2, 2, 2)
    assert _check(["mesh.data=2", "mesh.fsdp=-1", "mesh.tensor=1"], num_devices=8) == (2, 4, 1)
    assert _check([], num_devices=1) == (1, 1, 1)


def test_minus_one_that_cannot_fill_the_devices():
    message = _error(_check, ["mesh.data=-1", "mesh.fsdp=3"], num_devices=8)
    assert "mesh.fsdp=3" in message


def test_two_minus_one_axes_are_rejected():
    message = _error(_check, ["mesh.data=-1", "mesh.fsdp=-1", "mesh.tensor=2"], num_devices=8)
    assert "mesh.data=-1" in message and "mesh.fsdp=-1" in message


def test_zero_mesh_axis_is_rejected():
    message = _error(_check, ["mesh.data=-1", "mesh.tensor=0"], num_devices=8)
    assert "mesh.tensor=0" in message


# ---------------------------------------------------------------- divisibility and limits


def test_global_batch_not_divisible_by_batch_axes():
    # data*fsdp = 8 shards the batch; 12 sequences cannot split 8 ways.
    message = _error(_check, ["mesh.data=4", "mesh.fsdp=2", "mesh.tensor=1", "train.global_batch=12"])
    assert "train.global_batch=12" in message
    assert "mesh.data" in message and "mesh.fsdp" in message
    # The same batch is fine when the batch axes divide it.
    assert _check(["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "train.global_batch=12"]) == (2, 2, 2)


def test_micro_batch_not_divisible_by_batch_axes():
    message = _error(_check, ["mesh.data=8", "train.global_batch=32", "train.grad_accum=8"])
    assert "train.global_batch" in message and "train.grad_accum" in message


def test_heads_not_divisible_by_tensor_axis():
    message = _error(_check, ["mesh.data=2", "mesh.tensor=4", "model.num_heads=2"])
    assert "model.num_heads" in message
    assert "mesh.tensor" in message


def test_heads_not_a_multiple_of_kv_heads():
    message = _error(_check, ["model.num_heads=4", "model.num_kv_heads=3"], num_devices=1)
    assert "model.num_heads" in message and "model.num_kv_heads" in message


def test_seq_len_above_max_seq_len():
    message = _error(_check, ["train.seq_len=512", "model.max_seq_len=256"], num_devices=1)
    assert "train.seq_len" in message and "model.max_seq_len" in message


@pytest.mark.parametrize("override, key", [
    ("model.norm=batchnorm", "model.norm"),
    ("model.positions=alibi", "model.positions"),
    ("model.mlp=tanh", "model.mlp"),
    ("model.remat=some", "model.remat"),
    ("optimizer.schedule=step", "optimizer.schedule"),
])
def test_bad_choice_strings(override, key):
    message = _error(_check, [override], num_devices=1)
    assert key in message
    assert override.split("=")[1] in message


def test_non_positive_sizes_are_rejected():
    message = _error(_check, ["train.steps=0"], num_devices=1)
    assert "train.steps" in message


@pytest.mark.parametrize("override, key", [
    ("model.num_kv_heads=-2", "model.num_kv_heads"),
    ("model.head_dim=-8", "model.head_dim"),
])
def test_negative_derived_sizes_are_rejected(override, key):
    # 0 means "derive it"; a negative value is never valid and would only fail later, inside model.init.
    message = _error(_check, [override], num_devices=1)
    assert key in message


def test_d_model_not_divisible_by_heads_in_finalize():
    message = _error(finalize, _load(["model.d_model=100", "model.num_heads=3"]), VOCAB)
    assert "model.d_model" in message and "model.num_heads" in message


def test_finalize_derives_defaults_and_does_not_mutate_its_input():
    cfg = _load(["model.d_model=96", "model.num_heads=6"])
    final = finalize(cfg, VOCAB)
    assert final.model.head_dim == 16
    assert final.model.num_kv_heads == 6
    assert final.model.vocab_size == 320  # 259 rounded up to a multiple of 64
    assert final.model.vocab_size % final.model.vocab_multiple == 0
    assert (cfg.model.head_dim, cfg.model.num_kv_heads, cfg.model.vocab_size) == (0, 0, 0)


def test_vocab_smaller_than_tokenizer_is_rejected():
    message = _error(finalize, _load(["model.vocab_size=128"]), VOCAB)
    assert "model.vocab_size" in message


# ---------------------------------------------------------------- presets


@pytest.mark.parametrize("preset", MODEL_PRESETS)
def test_every_model_preset_loads_finalizes_and_validates(preset):
    cfg = finalize(_load(model=preset), VOCAB)
    assert cfg.model_preset == preset
    assert validate(cfg, 1) == (1, 1, 1)


def _param_count(preset: str) -> int:
    cfg = finalize(_load(model=preset), VOCAB)
    boxed = abstract_params(build_model(cfg.model), 8)  # eval_shape: nothing is allocated
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nn.unbox(boxed)))


@pytest.mark.parametrize("preset, low, high", [
    ("gpt2_small", 120e6, 130e6),
    ("llama_1b", 1.0e9, 1.6e9),
    ("llama3_8b", 7.5e9, 8.5e9),
])
def test_preset_parameter_counts(preset, low, high):
    n = _param_count(preset)
    assert low < n < high, f"{preset} has {n:,} parameters"


# ---------------------------------------------------------------- CLI


def test_cli_fails_fast_on_a_bad_key(tmp_path):
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "llm_jax", "train", "--workdir", str(tmp_path / "run"), "--config.train.stepz=1"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "train.stepz" in lines[0]
    assert elapsed < 20, f"a config error took {elapsed:.1f}s"
    assert not (tmp_path / "run").exists(), "nothing should be written for a bad config"


@pytest.mark.parametrize("override, key", [
    ("sample.top_p=0", "sample.top_p"), ("sample.top_k=-1", "sample.top_k"),
    ("profile.steps=3", "profile.start_step"), ("monitor.progress=fancy", "monitor.progress"),
])
def test_monitoring_keys_are_checked(override, key):
    from tests.conftest import small_config

    cfg = small_config()  # 5 steps: a 3-step profile from step 5 runs past the end
    key_, _, value = override.partition("=")
    set_key(cfg, key_, value, "test")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(finalize(cfg, 259), 1, 1)


def _topologies() -> dict:
    return load_module(pathlib.Path(TRAIN_CONFIG).parent / "topologies.py").PRESETS


@pytest.mark.parametrize("topology", sorted(_topologies()))
def test_every_topology_preset_fits_the_hardware_it_names(topology):
    """Each preset, with the 8B model, validates on its target's device and process count; the mesh is ICI x DCN."""
    target = _topologies()[topology]
    cfg = finalize(load_config(f"{TRAIN_CONFIG}:model=llama3_8b,topology={topology}"), 128256)
    granules = target.get("slices", target["processes"]) if uses_dcn(cfg.mesh) else 1  # TPU slices, GPU nodes
    if cfg.train.per_device_batch:
        cfg.train.global_batch = cfg.train.per_device_batch * target["devices"]
    shape = validate(cfg, target["devices"], target["processes"], granules)
    assert math.prod(shape) == target["devices"]
    if topology == "tpu_v5p_128x2":
        assert shape == (2, 64, 1)  # data across the two slices, FSDP inside each
    if topology == "gpu_cluster":
        assert shape == (4, 8, 1)  # 4 nodes of 8 GPUs


def test_gpu_xla_flags_are_known_to_this_jaxlib():
    """XLA aborts at start-up on a flag it does not know: start a backend with the GPU presets' flags (the flag
    registry is shared by every backend), and check that a made-up flag is refused the same way."""
    flags = load_module(pathlib.Path(TRAIN_CONFIG).parent / "topologies.py").GPU_XLA_FLAGS

    def start(xla_flags: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "XLA_FLAGS": xla_flags, "JAX_PLATFORMS": "cpu"}
        return subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env, capture_output=True,
                              text=True, timeout=120)

    assert start(flags).returncode == 0, start(flags).stderr[-2000:]
    assert start(flags + " --xla_gpu_no_such_flag=true").returncode != 0


# ---------------------------------------------------------------- every key against its declaration


@pytest.mark.parametrize("override, shown, allowed", [
    ("optimizer.b1=1.5", "optimizer.b1=1.5", "[0, 1)"),
    ("optimizer.b2=-3", "optimizer.b2=-3", "[0, 1)"),
    ("optimizer.eps=-1", "optimizer.eps=-1", "> 0"),
    ("optimizer.weight_decay=-5", "optimizer.weight_decay=-5", ">= 0"),
    ("optimizer.clip_norm=-1", "optimizer.clip_norm=-1", ">= 0"),  # -1 silently turned clipping off
    ("model.init_std=-1", "model.init_std=-1", "> 0"),
    ("model.norm_eps=-1", "model.norm_eps=-1", "> 0"),
    ("model.rope_theta=0", "model.rope_theta=0", "> 0"),
    ("train.eval_every=-3", "train.eval_every=-3", ">= 0"),
    ("optimizer.lr=1e999", "optimizer.lr=inf", "> 0"),
    ("model.vocab_size=17179869184", "model.vocab_size=17179869184", "2147483648"),
])
def test_out_of_range_values_name_the_key_value_and_range(override, shown, allowed):
    message = _error(_check, [override], num_devices=1)
    assert shown in message and allowed in message, message


def test_zero_clip_norm_still_turns_clipping_off():
    assert _check(["optimizer.clip_norm=0"], num_devices=1) == (1, 1, 1)


def test_every_numeric_key_has_a_range_and_refuses_nan_and_inf():
    from llm_jax.config.base import KEYS

    numeric = [name for name, k in KEYS.items() if k.numeric]
    assert len(numeric) > 50
    for name in numeric:
        k = KEYS[name]
        assert (k.gt, k.ge, k.lt, k.le) != (None,) * 4, f"{name} declares no range"
        for bad in ((math.nan, math.inf, -math.inf) if k.kind is float else ()):
            cfg = finalize(_load(), VOCAB)
            section, leaf = name.rsplit(".", 1)
            cfg[section][leaf] = bad
            assert f"{name}={bad!r}" in _error(validate, cfg, 1)


def test_base_config_is_built_from_the_declarations():
    from llm_jax.config.base import KEYS
    from llm_jax.config.load import flatten

    defaults = flatten(base_config().to_dict())
    assert defaults == {name: k.default for name, k in KEYS.items()}
    assert base_config() is not base_config()  # each call a fresh, mutable copy
    assert "runtime.coordinator_bind_address" in defaults


def test_a_config_file_that_adds_a_key_or_changes_a_type_is_refused(tmp_path):
    from llm_jax.config.validate import check_keys

    added = tmp_path / "added.py"
    added.write_text("from llm_jax.config import base_config\n\n\ndef get_config():\n"
                     "    c = base_config()\n    c.train.stepz = 3\n    return c\n")
    assert "train.stepz" in _error(check_keys, load_config(str(added)))
    retyped = tmp_path / "retyped.py"
    retyped.write_text("from llm_jax.config import base_config\n\n\ndef get_config():\n"
                       "    c = base_config()\n    c.train.steps = 2.5\n    return c\n")
    assert "retyped.py" in _error(load_config, str(retyped))


def test_unknown_key_suggestion_says_what_the_key_means():
    message = _error(_load, ["optimizer.weight_decy=0.1"])
    assert "optimizer.weight_decay (AdamW's decoupled weight decay)" in message
