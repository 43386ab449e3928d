"""Corpora tokenized and packed once (`llm-jax data prepare`), stored as ArrayRecord shards of packed rows.

Training then reads rows by random access, so starting or resuming at any step costs nothing. Layout of a
prepared directory:

    meta.json                           tokenizer identity, seq_len, packing, row counts, baseline loss, input stats
    train-S-NNNNN.arrayrecord           rows of training source S (one per ';'-separated group of train_files)
    validation-NNNNN.arrayrecord        validation rows

A record is one row: tokens then segment ids, `dtype` from meta.json, 2 x row_len values (row_len: as the
objective packs: seq_len + 1 for causal and prefix LM, seq_len for masked LM and span corruption).
"""

import collections
import json
import math
import pathlib

import grain
import ml_collections
import numpy as np

from llm_jax.data.sources import DataError, SourceStats
from llm_jax.data.tokenizer import Tokenizer

FORMAT_VERSION = 1
ROWS_PER_SHARD = 65536


class RecordRows:
    """Rows of prepared ArrayRecord shards; a grain random-access source that pickles into worker processes."""

    def __init__(self, paths: list[str], row_len: int, dtype: str):
        self.source, self.paths = grain.sources.ArrayRecordDataSource(paths), paths
        self.row_len, self.dtype = row_len, np.dtype(dtype)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        row = np.frombuffer(self.source[i], self.dtype).reshape(2, self.row_len).astype(np.int32)
        return {"tokens": row[0], "segment_ids": row[1]}


def read_meta(directory: str) -> dict:
    """meta.json of a prepared directory, checked: the shapes of its fields, and shard names that stay inside the
    directory (a directory someone gave us is data; its meta.json must not point the reader elsewhere)."""
    path = pathlib.Path(directory) / "meta.json"
    if not directory or not path.is_file():
        raise DataError(f"data.prepared_dir={directory!r} has no meta.json: run `llm-jax data prepare --out=DIR` "
                        "(a directory without meta.json is an unfinished preparation)")
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(path, f"is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise _bad(path, "is not a JSON object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: format version {meta.get('format_version')}, this code reads {FORMAT_VERSION}; "
                        "prepare the data again")
    _check_fields(path, meta)
    root = path.parent.resolve()
    shards = [s for source in meta["train"] for s in source["shards"]] + meta["validation"]["shards"]
    if len(set(shards)) != len(shards):  # one shard listed twice would be trained on twice, silently
        raise _bad(path, f"lists shard {next(s for s in shards if shards.count(s) > 1)!r} more than once")
    for shard in shards:
        if (pathlib.PurePath(shard).is_absolute() or ".." in pathlib.PurePath(shard).parts
                or not (root / shard).resolve().is_relative_to(root)):
            raise _bad(path, f"names shard {shard!r}, which is outside {root}")
    return meta


def _bad(path: pathlib.Path, what: str) -> DataError:
    return DataError(f"{path} {what}; re-run `llm-jax data prepare --out={path.parent}`")


def _check_fields(path: pathlib.Path, meta: dict) -> None:
    """Every field that training reads, with its type: a damaged file fails here, not as a KeyError later."""
    def is_source(x) -> bool:
        return (isinstance(x, dict) and type(x.get("rows")) is int and isinstance(x.get("shards"), list)
                and all(isinstance(s, str) and s for s in x["shards"]))

    checks = {"tokenizer": isinstance(meta.get("tokenizer"), dict) and "hash" in meta["tokenizer"],
              "seq_len": type(meta.get("seq_len")) is int and meta["seq_len"] > 0,
              "dtype": meta.get("dtype") in ("uint16", "int32"),  # what compact_dtype writes
              "train": isinstance(meta.get("train"), list) and all(map(is_source, meta["train"])) and meta["train"],
              "validation": is_source(meta.get("validation")),
              "unigram_loss": isinstance(meta.get("unigram_loss"), int | float),
              "stats": isinstance(meta.get("stats"), dict)}
    for field, ok in checks.items():
        if not ok:
            raise _bad(path, f"has a missing or malformed '{field}'")


def directories(value: str) -> list[str]:
    """data.prepared_dir: one prepared directory, or several separated by ';' (a mixture of their sources)."""
    return [d.strip() for d in value.split(";") if d.strip()] or [value]


def open_sources(cfg: ml_collections.ConfigDict, tokenizer: Tokenizer,
                 row_len: int) -> tuple[list[RecordRows], RecordRows, dict]:
    """The training sources of every directory of data.prepared_dir, in order (data.weights gives one weight per
    source), and their validation rows together, after checking that each was made with this tokenizer, sequence
    length and row length (`row_len`: the objective's). The meta returned combines theirs: summed input stats, the
    baseline averaged over validation rows."""
    train, validation, metas = [], [], []
    for directory in directories(cfg.data.prepared_dir):
        sources, held, meta = _open_one(pathlib.Path(directory), cfg, tokenizer, row_len)
        train, validation, metas = train + sources, [*validation, held], [*metas, meta]
    if len({m["dtype"] for m in metas}) > 1:
        raise DataError(f"data.prepared_dir={cfg.data.prepared_dir!r}: the directories store rows as "
                        f"{', '.join(m['dtype'] for m in metas)}; prepare them again with this code (it picks the "
                        "dtype from the tokenizer) to mix them")
    if len(metas) == 1:
        return train, validation[0], metas[0]
    held = RecordRows([p for v in validation for p in v.paths], row_len, metas[0]["dtype"])
    counts = [len(v) for v in validation]

    def mean(key: str) -> float:
        return sum(m.get(key, math.nan) * n for m, n in zip(metas, counts, strict=True)) / max(sum(counts), 1)

    stats = sum((collections.Counter(m["stats"]) for m in metas), collections.Counter())
    return train, held, {"stats": dict(stats), "unigram_loss": mean("unigram_loss"),
                         "unigram_accuracy": mean("unigram_accuracy")}


def _open_one(directory: pathlib.Path, cfg: ml_collections.ConfigDict, tokenizer: Tokenizer,
              row_len: int) -> tuple[list[RecordRows], RecordRows, dict]:
    meta = read_meta(str(directory))
    if meta["tokenizer"]["hash"] != tokenizer.identity()["hash"]:
        raise DataError(f"{directory} was prepared with tokenizer {meta['tokenizer']} but the config gives "
                        f"{tokenizer.identity()}; set data.tokenizer/data.tokenizer_path to match, or prepare again")
    if meta["seq_len"] != cfg.train.seq_len:
        raise DataError(f"{directory} was prepared for train.seq_len={meta['seq_len']}, the config has "
                        f"{cfg.train.seq_len}; set train.seq_len={meta['seq_len']} or prepare again")
    prepared_len = meta.get("row_len", meta["seq_len"] + 1)  # older preparations: causal LM rows
    if prepared_len != row_len:
        raise DataError(f"{directory} holds rows of {prepared_len} tokens (prepared for objective "
                        f"{meta.get('objective', 'causal_lm')}); this config's objective reads rows of {row_len}; "
                        "prepare the data again with this config")
    for shard in [s for source in meta["train"] for s in source["shards"]] + meta["validation"]["shards"]:
        if not (directory / shard).is_file():
            raise DataError(f"{directory / shard} is missing; prepare the data again")

    def rows(source: dict) -> RecordRows:
        """The source's shards, which must open and hold the rows meta.json counts (a cut or swapped shard)."""
        try:
            opened = RecordRows([str(directory / s) for s in source["shards"]], row_len, meta["dtype"])
        except Exception as e:  # the reader raises several kinds for a cut or foreign file
            raise DataError(f"a shard of {directory} ({', '.join(source['shards'][:3])}) cannot be read "
                            f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); prepare the data again") from None
        if len(opened) != source["rows"]:
            raise DataError(f"{directory}: shards {', '.join(source['shards'][:3])} hold {len(opened):,} rows but "
                            f"meta.json counts {source['rows']:,}; prepare the data again")
        return opened

    return [rows(s) for s in meta["train"]], rows(meta["validation"]), meta


def stats_of(meta: dict) -> SourceStats:
    return SourceStats(collections.Counter(meta["stats"]))
