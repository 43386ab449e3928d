"""Export to safetensors and start a run from another run's parameters (checkpoint or exported file)."""

import json
import struct

import jax
import ml_dtypes
import numpy as np
import pytest

from llm_jax.checkpoint import safetensors
from llm_jax.checkpoint.params import portable
from llm_jax.cli import main
from llm_jax.config import ConfigError
from llm_jax.train.loop import init_from, train
from llm_jax.train.setup import build_run
from tests.conftest import small_config

DEVICES = jax.devices()[:1]


def test_safetensors_layout_follows_the_format(tmp_path):
    tensors = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.array([1, -2], np.int32),
               "c": np.array([0.5, 2.0], ml_dtypes.bfloat16)}
    safetensors.write(tmp_path / "x.safetensors", tensors, {"note": "hi"})
    raw = (tmp_path / "x.safetensors").read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + size])
    assert header.pop("__metadata__") == {"note": "hi"}
    data, end = raw[8 + size:], 0
    for name in ("b", "a", "c"):  # in writing order, back to back from offset 0
        begin, stop = header[name]["data_offsets"]
        assert begin == end and data[begin:stop] == tensors[name].tobytes()
        end = stop
    assert end == len(data) and header["c"]["dtype"] == "BF16" and header["b"]["shape"] == [2, 3]
    back, meta = safetensors.read(tmp_path / "x.safetensors")
    assert meta == {"note": "hi"}
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype
        np.testing.assert_array_equal(back[k], v)


def _config(steps=3, **model):
    cfg = small_config()
    cfg.train.steps, cfg.checkpoint.every_steps = steps, 0
    for k, v in {"scan_layers": True, **model}.items():  # stacked layers, which the export splits into layers.<i>
        cfg.model[k] = v
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("source")
    train(_config(), workdir, DEVICES)
    out = workdir / "params.safetensors"
    assert main(["export", f"--workdir={workdir}", f"--out={out}"]) == 0
    return workdir, out


def test_export_names_each_layer_and_holds_the_checkpoint_values(trained):
    workdir, out = trained
    tensors, meta = safetensors.read(out)
    assert meta["step"] == "3" and json.loads(meta["tokenizer"])["kind"] == "byte"
    assert json.loads(meta["config"])["model"]["d_model"] == 64
    assert set(tensors) == {"embedding", "final_norm.scale"} | {
        f"layers.{i}.{w}" for i in range(2) for w in ("attn.wq", "attn.wk", "attn.wv", "attn.wo", "attn_norm.scale",
                                                      "mlp.wi_gate", "mlp.wi_up", "mlp.wo", "mlp_norm.scale")}
    run = build_run(_config(), DEVICES)
    init_from(run, str(workdir))  # the checkpoint, read directly
    stacked = run.state.params["layers"]["mlp"]["wo"]
    assert tensors["layers.1.mlp.wo"].shape == stacked.shape[1:]
    np.testing.assert_array_equal(tensors["layers.1.mlp.wo"], np.asarray(stacked)[1])
    np.testing.assert_array_equal(tensors["embedding"], np.asarray(run.state.params["embedding"]))
    run.data.train.close()
    # bfloat16 on request.
    assert main(["export", f"--workdir={workdir}", f"--out={workdir / 'bf16.safetensors'}", "--dtype=bfloat16"]) == 0
    assert safetensors.read(workdir / "bf16.safetensors")[0]["embedding"].dtype == ml_dtypes.bfloat16


def _first_loss(workdir):
    return next(r["loss"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
                if r.get("step") == 1 and "loss" in r)


def test_init_from_a_checkpoint_or_its_export_starts_from_the_same_parameters(trained, tmp_path, capsys):
    workdir, out = trained
    cfg = _config(steps=2)
    cfg.checkpoint.init_from = str(workdir)
    result = train(cfg, tmp_path / "run", DEVICES)
    assert f"parameters from {workdir} (step 3); optimizer state and step start fresh" in capsys.readouterr().out
    assert result.start_step == 0 and len(result.train_losses) == 2
    # The source run began from the same seed and batches: its first loss is what a fresh start would give.
    assert result.train_losses[0] != pytest.approx(_first_loss(workdir), rel=1e-4)
    # The checkpoint and its export give the same parameters, to a scanned model and to an unrolled one.
    runs = {"ckpt": build_run(_config(), DEVICES), "file": build_run(_config(), DEVICES),
            "unrolled": build_run(_config(scan_layers=False), DEVICES)}
    for name, run in runs.items():
        init_from(run, str(workdir if name == "ckpt" else out))
        run.data.train.close()
    ckpt = portable(runs["ckpt"].state.params)
    for name in ("file", "unrolled"):
        other = portable(runs[name].state.params)
        assert other.keys() == ckpt.keys()
        for k in ckpt:
            np.testing.assert_array_equal(other[k], ckpt[k], err_msg=f"{name}: {k}")


def test_init_from_is_checked_before_training(trained, tmp_path):
    workdir, out = trained
    cfg = _config()
    cfg.checkpoint.init_from = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"checkpoint\.init_from: .*nowhere does not exist"):
        train(cfg, tmp_path / "a", DEVICES)
    for source in (str(workdir), str(out)):
        cfg = _config(mlp_dim=96)
        cfg.checkpoint.init_from = source
        with pytest.raises(ConfigError, match=r"checkpoint\.init_from: .* holds another model: .*mlp.*"
                                              r"(checkpoint|file) \(.*128\), model \(.*96\)"):
            train(cfg, tmp_path / "b", DEVICES)
        assert not (tmp_path / "b").exists(), "a refused init_from writes nothing"


def test_export_to_a_directory_is_one_line_and_leaves_no_half_file(trained, tmp_path, capsys):
    workdir, _ = trained
    target = tmp_path / "out.safetensors"
    target.mkdir()
    assert main(["export", f"--workdir={workdir}", f"--out={target}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a directory" in err[0] and str(target) in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"], "no .tmp file left beside it"


def test_export_never_replaces_a_file_unless_asked(trained, tmp_path, capsys):
    workdir, _ = trained
    for name in ("corpus.jsonl", "old.safetensors"):
        precious = tmp_path / name
        precious.write_text("keep me\n")
        assert main(["export", f"--workdir={workdir}", f"--out={precious}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(precious) in err[0], err
        assert precious.read_text() == "keep me\n"
    assert main(["export", f"--workdir={workdir}", f"--out={precious}", "--overwrite"]) == 0
    assert safetensors.read(precious)[0]["embedding"].shape[1] == 64


def test_export_checks_every_stack_has_every_layer_of_its_config(tmp_path):
    from llm_jax.checkpoint.export import _check_layers
    from llm_jax.checkpoint.params import CheckpointError as Refused

    w = np.zeros(2)
    decoder = {f"layers.{i}.attn.wq": w for i in range(2)}
    _check_layers(decoder, {"num_layers": 2}, tmp_path)
    with pytest.raises(Refused, match=r"layers \[0, 1\] under 'layers.', its config says 3"):
        _check_layers(decoder, {"num_layers": 3}, tmp_path)
    t5 = {f"{s}.layers.{i}.attn.wq": w for s in ("encoder", "decoder") for i in range(2)}
    _check_layers(t5, {"family": "encoder_decoder", "num_layers": 2, "num_decoder_layers": 2}, tmp_path)
    with pytest.raises(Refused, match=r"under 'decoder.layers.', its config says 3"):
        _check_layers(t5, {"family": "encoder_decoder", "num_layers": 2, "num_decoder_layers": 3}, tmp_path)
