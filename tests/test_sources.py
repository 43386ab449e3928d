"""Document sources over real files: text, JSONL, Parquet, ArrayRecord, and every kind of bad input."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from llm_jax.data.sources import DataError, SourceOptions, SourceStats, read_documents
from tests.conftest import TRAIN_CONFIG
from tests.test_cli import SMALL, llm_jax

DOCS = ["First document.\nTwo lines.", "Second — with é and 日本", "Third\n\nhas a blank line inside"]


def read(pattern, **opts):
    stats = SourceStats()
    return list(read_documents(str(pattern), SourceOptions(**opts), stats)), stats.counts


def write_jsonl(path, docs, field="text"):
    path.write_text("".join(json.dumps({field: d, "meta": i}) + "\n" for i, d in enumerate(docs)))


def write_parquet(path, docs, column="text"):
    pq.write_table(pa.table({column: docs, "n": list(range(len(docs)))}), path)


def test_each_format_reads_the_same_documents(tmp_path):
    for i, d in enumerate(DOCS):
        (tmp_path / f"doc{i}.txt").write_text(d)
    write_jsonl(tmp_path / "docs.jsonl", DOCS)
    write_parquet(tmp_path / "docs.parquet", DOCS)
    writer = ArrayRecordWriter(str(tmp_path / "docs.arrayrecord"), "group_size:1")
    for d in DOCS:
        writer.write(d.encode())
    writer.close()
    assert read(tmp_path / "doc*.txt")[0] == DOCS
    assert read(tmp_path / "docs.jsonl")[0] == DOCS
    assert read(tmp_path / "docs.parquet")[0] == DOCS
    assert read(tmp_path / "docs.arrayrecord")[0] == DOCS
    both = f"{tmp_path / 'docs.jsonl'},{tmp_path / 'docs.parquet'}"
    assert read(both)[0] == DOCS + DOCS


def test_blank_line_blocks_and_empty_documents(tmp_path):
    (tmp_path / "a.txt").write_text("block one\nline two\n\nblock two\n\n\n\nblock three\n")
    docs, counts = read(tmp_path / "a.txt", text_split="blank_line")
    assert docs == ["block one\nline two", "block two", "block three"]
    assert counts["empty documents skipped"] == 1
    write_jsonl(tmp_path / "e.jsonl", ["x", "", "   ", "y"])
    docs, counts = read(tmp_path / "e.jsonl")
    assert docs == ["x", "y"] and counts["empty documents skipped"] == 2


def test_jsonl_bad_line_names_file_and_line_or_is_skipped(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": "fine"}\n{"text": oops}\n{"body": "no text"}\n{"text": 3}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:4: bad JSON line"):
        read(path)
    docs, counts = read(path, bad_json="skip")
    assert docs == ["ok", "fine"] and counts["JSONL lines skipped"] == 3
    docs, _ = read(path, bad_json="skip", text_field="body")
    assert docs == ["no text"]


def test_non_utf8_is_replaced_or_skipped_and_counted(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"good \xff\xfe bytes")
    (tmp_path / "b.txt").write_text("clean")
    docs, counts = read(tmp_path / "*.txt")
    assert docs == ["good \ufffd\ufffd bytes", "clean"]
    assert counts["documents with non-UTF-8 bytes replaced"] == 1
    docs, counts = read(tmp_path / "*.txt", bad_utf8="skip")
    assert docs == ["clean"] and counts["documents skipped for non-UTF-8 bytes"] == 1


def test_missing_empty_unknown_and_damaged_files(tmp_path):
    with pytest.raises(DataError, match="matches no file"):
        read(tmp_path / "nothing*.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match=r"empty\.jsonl: file is empty"):
        read(tmp_path / "empty.jsonl")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"extension '\.csv'.*data\.format"):
        read(tmp_path / "data.csv")
    write_parquet(tmp_path / "p.parquet", DOCS, column="content")
    with pytest.raises(DataError, match=r"p\.parquet: Parquet file has no column 'text'"):
        read(tmp_path / "p.parquet")
    assert read(tmp_path / "p.parquet", text_field="content")[0] == DOCS
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"junk\.parquet: not a readable Parquet file"):
        read(tmp_path / "junk.parquet")


@pytest.fixture(scope="module")
def user_corpus(tmp_path_factory):
    """A corpus none of the package ships: generated sentences about numbered machines."""
    d = tmp_path_factory.mktemp("user_corpus")
    docs = [f"Machine {i} reports {i * 7 % 13} faults and {i % 5} alarms.\n" * (1 + i % 4) for i in range(300)]
    write_jsonl(d / "train.jsonl", docs[:270])
    write_jsonl(d / "val.jsonl", docs[270:])
    write_parquet(d / "train.parquet", docs[:270])
    return d


@pytest.mark.parametrize("files", ["train.jsonl", "train.parquet"])
def test_train_on_user_files(user_corpus, tmp_path, files):
    out = llm_jax("train", f"--config={TRAIN_CONFIG}:model=tiny,topology=cpu", f"--workdir={tmp_path}",
                  "--config.data.corpus=files", f"--config.data.train_files={user_corpus / files}",
                  f"--config.data.eval_files={user_corpus / 'val.jsonl'}", "--config.train.steps=3", *SMALL)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "data: " in out.stdout and "300 documents" in out.stdout  # 270 train + 30 validation


def test_bad_data_fails_before_training_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{broken\n')
    workdir = tmp_path / "run"
    out = llm_jax("train", f"--config={TRAIN_CONFIG}:model=tiny,topology=cpu", f"--workdir={workdir}",
                  "--config.data.corpus=files", f"--config.data.train_files={bad}", *SMALL)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("data error: ") and "bad.jsonl:2" in out.stderr
    out = llm_jax("train", f"--workdir={workdir}", "--config.data.corpus=files",
                  f"--config.data.train_files={tmp_path / 'none*.jsonl'}")
    assert out.returncode == 2 and "matches no file" in out.stderr
    assert not workdir.exists()
