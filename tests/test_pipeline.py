"""The configured pipeline end to end: sources -> grain workers -> packed rows -> loaders; prepared ArrayRecord
datasets; mixtures from config; and the errors for data prepared with another tokenizer or sequence length."""

import json

import numpy as np
import pytest

from llm_jax.data.pipeline import make_data
from llm_jax.data.prepare import prepare_data
from llm_jax.data.sources import DataError
from llm_jax.data.tokenizer_train import train_sentencepiece
from tests.conftest import TRAIN_CONFIG, small_config
from tests.test_cli import SMALL, llm_jax
from tests.test_sources import write_jsonl, write_parquet


def _machines(n, start=0):
    return [f"Machine {i} reports {i * 7 % 13} faults and {i % 5} alarms.\n" * (1 + i % 4)
            for i in range(start, start + n)]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipeline_corpus")
    for shard in range(3):  # several files, so that worker processes share the work
        write_jsonl(d / f"web-{shard}.jsonl", _machines(60, 100 * shard))
    write_parquet(d / "books.parquet", [f"Book {i}: " + "once upon a time " * (i % 9 + 1) for i in range(120)])
    return d


def _config(corpus_dir, *overrides):
    cfg = small_config()
    cfg.data.corpus = "files"
    cfg.data.train_files = str(corpus_dir / "web-*.jsonl")
    cfg.data.eval_holdout = 10
    for o in overrides:
        key, value = o.split("=", 1)
        section, name = key.split(".")
        cfg[section][name] = type(cfg[section][name])(value)
    return cfg


def _equal(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_worker_processes_give_the_same_batches(corpus_dir):
    base, workers = make_data(_config(corpus_dir)), make_data(_config(corpus_dir, "data.workers=2"))
    assert base.train.num_rows == workers.train.num_rows > 0
    assert base.stats.counts == workers.stats.counts and base.stats.counts["documents"] == 180
    for step in range(4):
        assert _equal(base.train.batch_at(step), workers.train.batch_at(step))
        assert _equal(base.eval.batch_at(step), workers.eval.batch_at(step))


def test_bad_input_in_a_worker_is_the_same_clear_error(corpus_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 3}\n')
    cfg = _config(corpus_dir, "data.workers=2")
    cfg.data.train_files = f"{corpus_dir / 'web-0.jsonl'},{bad}"
    with pytest.raises(DataError, match=r"bad\.jsonl:2: bad JSON line"):
        make_data(cfg)


def test_prepared_shards_give_the_same_batches_as_the_files(corpus_dir, tmp_path):
    cfg = _config(corpus_dir, "data.packing=best_fit")
    meta = prepare_data(cfg, str(tmp_path / "prep"), rows_per_shard=7)
    assert len(meta["train"][0]["shards"]) > 1, "several shards, so that reads cross shard boundaries"
    prepared_cfg = _config(corpus_dir, "data.packing=best_fit", "data.corpus=prepared",
                           f"data.prepared_dir={tmp_path / 'prep'}")
    direct, prepared = make_data(cfg), make_data(prepared_cfg)
    assert prepared.train.num_rows == direct.train.num_rows == meta["train"][0]["rows"]
    assert prepared.unigram_loss == pytest.approx(direct.unigram_loss)
    for step in [0, 1, 5, 40]:  # 40 is past the first epoch
        assert _equal(direct.train.batch_at(step), prepared.train.batch_at(step))
        assert _equal(direct.eval.batch_at(step), prepared.eval.batch_at(step))
    # Iterating with a worker process reads the shards in the same order.
    prepared_cfg.data.workers = 1
    loader = make_data(prepared_cfg).train
    try:
        assert all(_equal(next(loader), direct.train.batch_at(s)) for s in range(3))
    finally:
        loader.close()


def test_prepared_data_refuses_another_tokenizer_or_sequence_length(corpus_dir, tmp_path):
    prepare_data(_config(corpus_dir), str(tmp_path / "prep"))
    cfg = _config(corpus_dir, "data.corpus=prepared", f"data.prepared_dir={tmp_path / 'prep'}", "train.seq_len=16")
    with pytest.raises(DataError, match=r"train\.seq_len=32"):
        make_data(cfg)
    tok = train_sentencepiece([str(corpus_dir / "web-0.jsonl")], 300, "bpe", tmp_path / "tok")
    cfg = _config(corpus_dir, "data.corpus=prepared", f"data.prepared_dir={tmp_path / 'prep'}",
                  "data.tokenizer=sentencepiece", f"data.tokenizer_path={tok.model_path}")
    with pytest.raises(DataError, match=r"prepared with tokenizer .*'kind': 'byte'.*'kind': 'sentencepiece'"):
        make_data(cfg)
    (tmp_path / "prep" / "meta.json").unlink()
    with pytest.raises(DataError, match=r"no meta\.json"):
        make_data(_config(corpus_dir, "data.corpus=prepared", f"data.prepared_dir={tmp_path / 'prep'}"))


def test_mixture_of_two_sources_by_weight(corpus_dir):
    cfg = _config(corpus_dir, "data.weights=3,1")
    cfg.data.train_files = f"{corpus_dir / 'web-*.jsonl'};{corpus_dir / 'books.parquet'}"
    data = make_data(cfg)
    assert data.weights == [0.75, 0.25]
    rows = [data.tokenizer.decode(r) for s in range(100) for r in data.train.batch_at(s)["inputs"]]
    # 33 bytes of a book always hold one of these words; the machine reports never do.
    from_books = np.mean([any(w in r for w in ("Book", "upon", "time", "once")) for r in rows])
    assert abs(from_books - 0.25) < 0.03, from_books
    cfg.data.weights = "1,2,3"
    with pytest.raises(DataError, match="needs 2 non-negative numbers"):
        make_data(cfg)


def test_data_prepare_then_train_and_bench_from_the_command_line(corpus_dir, tmp_path):
    common = [f"--config={TRAIN_CONFIG}:model=tiny,topology=cpu", "--config.data.corpus=files",
              f"--config.data.train_files={corpus_dir / 'web-*.jsonl'}", "--config.data.eval_holdout=10", *SMALL]
    out = llm_jax("data", "prepare", f"--out={tmp_path / 'prep'}", *common)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "train rows" in out.stdout and (tmp_path / "prep" / "meta.json").is_file()
    prepared = [f"--config={TRAIN_CONFIG}:model=tiny,topology=cpu", "--config.data.corpus=prepared",
                f"--config.data.prepared_dir={tmp_path / 'prep'}", *SMALL]
    out = llm_jax("train", f"--workdir={tmp_path / 'run'}", "--config.train.steps=3", *prepared)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "validation loss" in out.stdout
    out = llm_jax("data", "bench", "--batches=20", "--config.data.workers=1", *prepared)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["tokens_per_s"] > 0 and result["workers"] == 1
    assert f"{result['tokens_per_s']:,.0f} tokens/s" in out.stdout


def test_a_mixture_of_prepared_directories_reads_as_one_preparation_of_both(corpus_dir, tmp_path):
    """Two corpora prepared apart, mixed by data.weights at training time, give the batches of one preparation
    with both as sources (pad packing: no row spans the two, so the validation rows are the same too)."""
    web, books = str(corpus_dir / "web-*.jsonl"), str(corpus_dir / "books.parquet")
    for name, files in (("web", web), ("books", books), ("both", f"{web};{books}")):
        cfg = _config(corpus_dir, "data.packing=pad")
        cfg.data.train_files = files
        prepare_data(cfg, str(tmp_path / name), rows_per_shard=16)

    def data(directory):
        return make_data(_config(corpus_dir, "data.packing=pad", "data.corpus=prepared", "data.weights=3,1",
                                 f"data.prepared_dir={directory}"))

    mixed, one = data(f"{tmp_path / 'web'};{tmp_path / 'books'}"), data(tmp_path / "both")
    assert mixed.weights == one.weights == [0.75, 0.25]
    assert mixed.eval.num_rows == one.eval.num_rows > 0
    assert mixed.unigram_loss == pytest.approx(one.unigram_loss, rel=0.05)
    for step in range(4):
        assert _equal(mixed.train.batch_at(step), one.train.batch_at(step))
        assert _equal(mixed.eval.batch_at(step), one.eval.batch_at(step))
