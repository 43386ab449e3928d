"""`llm-jax data prepare` as a stream: the rows of the in-memory packer, the same shards with or without worker
processes, host memory that does not grow with the corpus, and no half-written shard after a kill."""

import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from llm_jax.data.packing import BEST_FIT_WINDOW, pack_documents
from llm_jax.data.prepare import prepare_data
from llm_jax.data.prepared import read_meta
from llm_jax.data.sources import DataError
from llm_jax.data.stream import StreamPacker, drain
from llm_jax.data.tokenizer import DEFAULT_SPECIALS
from tests.conftest import TRAIN_CONFIG, small_config

PREPARE = [sys.executable, "-m", "llm_jax", "data", "prepare", f"--config={TRAIN_CONFIG}:model=tiny,topology=cpu",
           "--config.data.corpus=files", "--rows-per-shard=20000"]


@pytest.mark.parametrize("strategy", ["concat", "pad", "best_fit"])
def test_the_stream_packer_makes_the_rows_of_the_whole_corpus_packer(strategy):
    rng = np.random.default_rng(0)
    # More documents than one best_fit window, some longer than a row: every carry and boundary is crossed.
    docs = [rng.integers(3, 200, rng.integers(1, 40), dtype=np.int32) for _ in range(BEST_FIT_WINDOW + 300)]
    whole = pack_documents(docs, 17, strategy, DEFAULT_SPECIALS)
    parts = list(drain(docs, StreamPacker(17, strategy, DEFAULT_SPECIALS)))
    assert len(parts) > 1, "the stream must have cut the corpus into several chunks"
    for key in ("tokens", "segment_ids", "positions"):
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key], err_msg=key)


def _files(directory: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_worker_processes_write_the_same_shards_and_meta(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(5):  # several files: the unit of work of the worker processes
        with open(tmp_path / f"part-{i}.jsonl", "w") as f:
            for j in range(40):
                f.write(json.dumps({"text": f"{i}-{j} " + "word " * int(rng.integers(1, 60))}) + "\n")
    runs = {}
    for workers in (0, 2):
        cfg = small_config()
        cfg.data.corpus, cfg.data.train_files, cfg.data.workers = "files", str(tmp_path / "part-*.jsonl"), workers
        cfg.data.eval_holdout = 10
        runs[workers] = prepare_data(cfg, str(tmp_path / f"out{workers}"), rows_per_shard=9)
    assert len(runs[0]["train"][0]["shards"]) > 3
    assert _files(tmp_path / "out0") == _files(tmp_path / "out2")
    for shard, digest in zip(runs[0]["train"][0]["shards"], runs[0]["train"][0]["sha256"], strict=True):
        assert hashlib.sha256(_records(tmp_path / "out0" / shard)).hexdigest() == digest, shard


def _records(path: pathlib.Path) -> bytes:
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(str(path))
    try:
        return b"".join(reader.read(list(range(reader.num_records()))))
    finally:
        reader.close()


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """JSONL corpora of about 6 and 30 MB."""
    root = tmp_path_factory.mktemp("corpora")
    rng = np.random.default_rng(2)
    words = np.array(["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "runs"])
    lines = [json.dumps({"text": " ".join(rng.choice(words, int(rng.integers(200, 2000))))}) + "\n"
             for _ in range(800)]
    for name, copies in (("small", 1), ("large", 5)):
        with open(root / f"{name}.jsonl", "w") as f:
            for _ in range(copies):
                f.writelines(lines)
    return root


def _peak_rss_mib(corpus: pathlib.Path, out: pathlib.Path) -> float:
    """The preparation's peak resident memory, in a process of its own (this one has JAX and more loaded)."""
    code = ("import resource, sys; from llm_jax.cli import main; code = main(sys.argv[1:]); "
            "print('peak', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024); sys.exit(code)")
    out_ = subprocess.run([sys.executable, "-c", code, *PREPARE[3:], f"--config.data.train_files={corpus}",
                           f"--out={out}"], capture_output=True, text=True, timeout=300)
    assert out_.returncode == 0, out_.stderr[-2000:]
    return float(out_.stdout.split("peak")[-1])


@pytest.fixture(scope="module")
def prepared(corpora, tmp_path_factory):
    """Each corpus prepared in a process of its own, with its peak resident memory in MiB."""
    root = tmp_path_factory.mktemp("prepared")
    return {name: (root / name, _peak_rss_mib(corpora / f"{name}.jsonl", root / name)) for name in ("small", "large")}


def test_peak_memory_does_not_grow_with_the_corpus(corpora, prepared):
    (small_dir, small), (large_dir, large) = prepared["small"], prepared["large"]
    grown_mib = (corpora / "large.jsonl").stat().st_size / 2**20 - (corpora / "small.jsonl").stat().st_size / 2**20
    # Holding the corpus would add at least its int32 token ids (4x the text) to the peak.
    assert large - small < 0.5 * grown_mib, (f"peak {small:.0f} MiB for the small corpus, {large:.0f} MiB for one "
                                             f"{grown_mib:.0f} MiB larger")
    assert read_meta(str(large_dir))["tokens"] > 4 * read_meta(str(small_dir))["tokens"]


def test_a_killed_preparation_leaves_no_readable_half_and_a_rerun_makes_the_same_shards(corpora, prepared,
                                                                                          tmp_path):
    out = tmp_path / "out"
    argv = [*PREPARE, f"--config.data.train_files={corpora / 'large.jsonl'}", f"--out={out}"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / "train-0-00001.arrayrecord").exists():  # killed between sealed shards, one being written
        assert proc.poll() is None and time.monotonic() < deadline, "the preparation ended before it was killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "meta.json").exists()
    with pytest.raises(DataError, match=r"no meta\.json"):  # what training reads first
        read_meta(str(out))

    assert subprocess.run(argv, capture_output=True, timeout=300).returncode == 0
    assert not list(out.glob("*.tmp")), "the rerun removes the killed run's half-written shard"
    assert _files(out) == _files(prepared["large"][0])


def test_data_stats_reports_what_the_shards_hold(tmp_path):
    from llm_jax.data.prepared import RecordRows
    from llm_jax.data.stats import describe

    with open(tmp_path / "a.jsonl", "w") as f:
        for j in range(50):
            f.write(json.dumps({"text": "x" * (j * 7 + 1)}) + "\n")
    cfg = small_config()
    cfg.data.corpus, cfg.data.train_files, cfg.data.packing, cfg.data.eval_holdout = "files", str(
        tmp_path / "a.jsonl"), "pad", 10
    meta = prepare_data(cfg, str(tmp_path / "p"), rows_per_shard=8)
    lines, figures = describe(str(tmp_path / "p"), cfg)
    train, validation = figures["sources"]
    assert train["documents"] + validation["documents"] == meta["stats"]["documents"] == 50
    assert validation["documents"] == 5 and sum(train["length_histogram"]) == 45
    # byte tokenizer: a document of n characters is n tokens; lengths 8..14 are the bucket of bit length 4
    assert train["length_histogram"][4] == sum(1 for j in range(50) if j % 10 != 9 and 8 <= j * 7 + 1 <= 15)
    rows = RecordRows([str(tmp_path / "p" / s) for s in meta["train"][0]["shards"]], meta["row_len"], meta["dtype"])
    tokens = sum(int((rows[i]["segment_ids"] != 0).sum()) for i in range(len(rows)))
    assert train["tokens"] == tokens and train["rows"] == len(rows)
    assert train["packing_efficiency"] == pytest.approx(tokens / (len(rows) * meta["row_len"]))
    assert train["epochs"] == pytest.approx(cfg.train.steps * cfg.train.global_batch / len(rows))
    assert any("document lengths" in line for line in lines)


def test_a_killed_preparation_resumes_keeping_the_units_it_finished(tmp_path):
    rng = np.random.default_rng(3)
    parts = tmp_path / "parts"
    parts.mkdir()
    for i in range(12):
        with open(parts / f"part-{i:02d}.jsonl", "w") as f:
            for _ in range(300):
                f.write(json.dumps({"text": "abcdefgh " * int(rng.integers(50, 300))}) + "\n")
    argv = [*PREPARE, f"--config.data.train_files={parts / 'part-*.jsonl'}"]
    clean = tmp_path / "clean"
    assert subprocess.run([*argv, f"--out={clean}"], capture_output=True, timeout=300).returncode == 0

    out = tmp_path / "out"
    proc = subprocess.Popen([*argv, f"--out={out}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (out / "work" / "tokens-00002.json").exists():
        assert proc.poll() is None, "the preparation ended before it was killed"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "meta.json").exists()
    # A finished unit is kept: swap its input for other text of the same size and time, and the rerun still
    # uses the tokens it made. A damaged one is made again: flip a byte of the second unit's tokens.
    first = parts / "part-00.jsonl"
    info = first.stat()
    first.write_bytes(first.read_bytes().replace(b"abcdefgh", b"zyxwvuts"))
    os.utime(first, ns=(info.st_atime_ns, info.st_mtime_ns))
    damaged = out / "work" / "tokens-00001.arrayrecord"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))

    assert subprocess.run([*argv, f"--out={out}"], capture_output=True, timeout=300).returncode == 0
    assert not (out / "work").exists(), "the tokenized units are removed once meta.json is written"
    assert _files(out) == _files(clean)
