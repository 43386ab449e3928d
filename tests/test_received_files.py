"""Files received from others are data, not instructions: a checkpoint's or an exported file's saved config sets the
model, tokenizer and data only (never XLA flags or a coordinator to dial), a damaged or crafted .safetensors header
is a one-line error before anything is allocated, and a prepared dataset's meta.json cannot point outside its
directory."""

import json
import os
import pathlib
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest

from llm_jax.checkpoint import safetensors
from llm_jax.cli import main
from llm_jax.config import ConfigError
from llm_jax.config.load import config_from_saved
from llm_jax.data.sources import DataError
from llm_jax.train.loop import train
from tests.conftest import REPO, small_config

DEVICES = jax.devices()[:1]
BOGUS_COORDINATOR = "203.0.113.7:8476"  # TEST-NET-3: nothing answers there


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    """A real run whose saved config asks for an XLA dump into `dump` and a coordinator nobody runs (training
    in-process never applies runtime.*: JAX is already up), and its export without the coordinator."""
    root = tmp_path_factory.mktemp("crafted")
    cfg = small_config()
    cfg.train.steps, cfg.checkpoint.every_steps = 2, 0
    cfg.runtime.xla_flags = f"--xla_dump_to={root / 'dump'}"
    cfg.runtime.coordinator_address, cfg.runtime.num_processes, cfg.runtime.process_id = BOGUS_COORDINATOR, 2, 1
    cfg.runtime.init_timeout_s = 5
    train(cfg, root / "run", DEVICES)
    exported = root / "params.safetensors"
    assert main(["export", f"--workdir={root / 'run'}", f"--out={exported}"]) == 0
    tensors, metadata = safetensors.read(exported)
    saved = json.loads(metadata["config"])
    assert saved["runtime"]["coordinator_address"] == BOGUS_COORDINATOR  # export copies the config as it was
    saved["runtime"]["coordinator_address"], saved["runtime"]["num_processes"] = "", 0
    safetensors.write(exported, {k: np.array(v) for k, v in tensors.items()}, {**metadata, "config": json.dumps(saved)})
    assert not (root / "dump").exists()
    return root


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "llm_jax", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_eval_and_sample_take_no_runtime_keys_from_the_file(crafted):
    evaluated = _cli("eval", f"--workdir={crafted / 'run'}")
    sampled = _cli("sample", f"--workdir={crafted / 'params.safetensors'}", "--max-new-tokens=2", "--prompt=ROMEO:")
    (out, _), (sample_out, _) = evaluated.communicate(timeout=300), sampled.communicate(timeout=300)
    assert evaluated.returncode == 0, out[-3000:]  # it did not wait for the coordinator, nor fail to reach it
    assert sampled.returncode == 0, sample_out[-3000:]
    assert not (crafted / "dump").exists()  # the file's XLA_FLAGS were not applied
    note = next(line for line in out.splitlines() if line.startswith("note:"))
    for key in ("runtime.xla_flags", "runtime.coordinator_address", "runtime.num_processes"):
        assert key in note, note
    assert "runtime.xla_flags" in sample_out and "--- sample 1 ---\nROMEO:" in sample_out
    assert json.loads(out.splitlines()[-1])["step"] == 2


def test_a_saved_config_sets_model_tokenizer_and_data_keys_only():
    saved = {"model": {"d_model": 96}, "data": {"tokenizer": "sentencepiece", "tokenizer_path": "t.model",
                                                 "eval_files": "v.txt", "workers": 7, "threads": 9},
             "train": {"seq_len": 48, "global_batch": 4, "eval_batches": 3, "steps": 9},
             "sample": {"prompt": "JULIET:"}, "runtime": {"xla_flags": "--xla_dump_to=/x", "num_cpu_devices": 8},
             "mesh": {"tensor": 4}, "sharding": {"rules": [["batch", "data"]]}, "checkpoint": {"init_from": "/y"},
             "profile": {"steps": 3}, "monitor": {"progress": "plain"}, "optimizer": {"lr": 1.0}}
    cfg, dropped, ignored = config_from_saved(saved, ["mesh.fsdp=2"])
    assert (cfg.model.d_model, cfg.data.tokenizer, cfg.data.tokenizer_path, cfg.data.eval_files) == (
        96, "sentencepiece", "t.model", "v.txt")
    assert (cfg.train.seq_len, cfg.train.global_batch, cfg.train.eval_batches, cfg.sample.prompt) == (
        48, 4, 3, "JULIET:")
    default = config_from_saved({})[0]
    for key in ("data.workers", "data.threads", "runtime.xla_flags", "runtime.num_cpu_devices", "mesh.tensor",
                "checkpoint.init_from", "profile.steps", "monitor.progress", "train.steps"):
        section, leaf = key.split(".")
        assert cfg[section][leaf] == default[section][leaf], key
    assert cfg.sharding.rules == default.sharding.rules and cfg.mesh.fsdp == 2  # the user's override applies
    assert dropped == [] and set(ignored) == {"data.workers", "data.threads", "runtime.xla_flags",
                                              "runtime.num_cpu_devices", "mesh.tensor", "sharding.rules",
                                              "checkpoint.init_from", "profile.steps", "monitor.progress"}


def test_init_from_takes_parameters_not_the_sources_config(crafted, tmp_path):
    cfg = small_config()
    cfg.train.steps, cfg.checkpoint.every_steps = 1, 0
    cfg.checkpoint.init_from = str(crafted / "run")
    train(cfg, tmp_path / "run", DEVICES)
    record = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    # The run keeps its own runtime keys (defaults here); only the source's parameters and tokenizer are read.
    assert record["runtime"]["xla_flags"] == "" and record["runtime"]["coordinator_address"] == ""
    assert record["runtime"]["num_processes"] == 0 and record["checkpoint"]["init_from"] == str(crafted / "run")


def _header_file(path: pathlib.Path, header, data: bytes = b"", size: int | None = None) -> pathlib.Path:
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob) if size is None else size) + blob + data)
    return path


GOOD = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
BAD_HEADERS = {  # the `safetensors` package's checks, each reported as one line naming the file
    "past the file": (GOOD, b"\0" * 16, 10_000, r"invalid header length"),
    "huge": (GOOD, b"\0" * 16, 2**62, r"header too large"),
    "not json": (b"{nope", b"", None, r"invalid JSON in header"),
    "a list": ([1, 2], b"", None, r"invalid JSON in header: invalid type: sequence"),
    "dtype": ({"w": {**GOOD["w"], "dtype": "F8_E9"}}, b"\0" * 16, None, r"unknown variant `F8_E9`"),
    "negative dim": ({"w": {**GOOD["w"], "shape": [-2, -8]}}, b"\0" * 16, None, r"integer `-2`, expected usize"),
    "bool dim": ({"w": {**GOOD["w"], "shape": [True, 4]}}, b"\0" * 16, None, r"boolean `true`, expected usize"),
    "offsets past the data": ({"w": {**GOOD["w"], "data_offsets": [0, 1 << 40]}}, b"\0" * 16, None,
                              r"invalid shape, data type, or offset for tensor"),
    "offsets backwards": ({"w": {**GOOD["w"], "data_offsets": [16, 0]}}, b"\0" * 16, None,
                          r"invalid offset for tensor `w`"),
    "size": ({"w": {**GOOD["w"], "shape": [2, 3]}}, b"\0" * 16, None, r"invalid shape, data type, or offset"),
    "no offsets": ({"w": {"dtype": "F32", "shape": [4]}}, b"\0" * 16, None, r"missing field `data_offsets`"),
    "metadata": ({"__metadata__": {"step": 3}, **GOOD}, b"\0" * 16, None, r"integer `3`, expected a string"),
    "dtype a list": ({"w": {**GOOD["w"], "dtype": ["F32"]}}, b"\0" * 16, None, r"invalid type: sequence"),
    "deep json": (b"[" * 100_000 + b"]" * 100_000, b"", None, r"invalid JSON in header"),
    "overlap": ({**GOOD, "v": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 16, None,
                r"invalid offset for tensor"),
    "gap": ({"w": {**GOOD["w"], "data_offsets": [8, 24]}}, b"\0" * 24, None, r"invalid offset for tensor `w`"),
    "unused data": (GOOD, b"\0" * 20, None, r"incomplete metadata, file not fully covered"),
}


@pytest.mark.parametrize("case", BAD_HEADERS)
def test_a_bad_safetensors_header_is_refused_before_reading(case, tmp_path):
    header, data, size, message = BAD_HEADERS[case]
    path = _header_file(tmp_path / "x.safetensors", header, data, size)
    with pytest.raises(safetensors.SafetensorsError, match=message) as e:
        safetensors.read(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    _header_file(path, GOOD, np.arange(4, dtype=np.float32).tobytes())  # the same file made valid reads
    np.testing.assert_array_equal(safetensors.read(path)[0]["w"], [[0, 1], [2, 3]])


def test_a_short_safetensors_file_ends_eval_and_init_from_with_one_line(tmp_path, capsys):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"\x01\x02\x03\x04")
    assert main(["eval", f"--workdir={path}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "header too small" in err and str(path) in err
    cfg = small_config()
    cfg.checkpoint.init_from = str(path)
    with pytest.raises(ConfigError, match=r"checkpoint\.init_from: .*header too small"):
        train(cfg, tmp_path / "run", DEVICES)  # refused before anything compiles


def _prepared(tmp_path: pathlib.Path) -> pathlib.Path:
    from llm_jax.data.prepare import prepare_data

    prepare_data(small_config(), str(tmp_path / "prep"))  # what `llm-jax data prepare` writes
    return tmp_path / "prep"


def _meta_error(prep: pathlib.Path, meta) -> str:
    from llm_jax.data.prepared import read_meta

    (prep / "meta.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    with pytest.raises(DataError) as e:
        read_meta(str(prep))
    message = str(e.value)
    assert str(prep / "meta.json") in message and "re-run `llm-jax data prepare" in message, message
    return message


def test_a_prepared_meta_json_names_shards_inside_its_directory_only(tmp_path):
    from llm_jax.data.prepared import read_meta

    prep = _prepared(tmp_path)
    good = json.loads((prep / "meta.json").read_text())
    assert read_meta(str(prep)) == good
    secret = tmp_path / "secret.arrayrecord"
    secret.write_bytes(b"elsewhere")
    (prep / "link.arrayrecord").symlink_to(secret)
    for shard in (str(secret), "../secret.arrayrecord", "sub/../../secret.arrayrecord", "link.arrayrecord"):
        meta = {**good, "validation": {**good["validation"], "shards": [shard]}}
        assert f"names shard {shard!r}, which is outside" in _meta_error(prep, meta)
    text = json.dumps(good)
    assert "is not valid JSON" in _meta_error(prep, text[: len(text) // 2])  # cut off mid-write
    assert "is not a JSON object" in _meta_error(prep, "[]")
    assert "'train'" in _meta_error(prep, {k: v for k, v in good.items() if k != "train"})
    assert "'seq_len'" in _meta_error(prep, {**good, "seq_len": "32"})
    assert "'validation'" in _meta_error(prep, {**good, "validation": {"rows": 3, "shards": [7]}})
    assert os.path.exists(secret)


def test_a_prepared_directory_whose_shards_disagree_with_meta_json_is_refused(tmp_path):
    from llm_jax.data.prepared import open_sources
    from llm_jax.data.tokenizer import make_tokenizer

    prep = _prepared(tmp_path)
    good = json.loads((prep / "meta.json").read_text())
    cfg = small_config()
    cfg.data.corpus, cfg.data.prepared_dir = "prepared", str(prep)
    tokenizer = make_tokenizer("byte")

    def error() -> str:
        with pytest.raises(DataError) as e:
            open_sources(cfg, tokenizer, cfg.train.seq_len + 1)
        assert "\n" not in str(e.value) and "prepare the data again" in str(e.value), str(e.value)
        return str(e.value)

    shard = good["train"][0]["shards"][0]
    twice = {**good, "train": [{**good["train"][0], "shards": [shard, shard]}]}
    assert f"lists shard {shard!r} more than once" in _meta_error(prep, twice)
    (prep / "meta.json").write_text(json.dumps({**good, "train": [{**good["train"][0], "rows": 10**12}]}))
    assert f"meta.json counts {10**12:,}" in error()
    (prep / "meta.json").write_text(json.dumps(good))
    data = (prep / shard).read_bytes()
    (prep / shard).write_bytes(data[: len(data) // 3])  # cut short
    assert f"a shard of {prep} ({shard}" in error() and "cannot be read" in error()
