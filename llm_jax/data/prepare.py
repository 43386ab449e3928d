"""`llm-jax data prepare`: the configured corpus tokenized and packed into ArrayRecord shards, in memory bounded
by the settings, with the rows the in-memory path makes of it. Two passes: every unit of input is tokenized on
its own, by data.workers processes (data/units.py: parallel, resumable), then one streaming pass packs the units
in input order into shards (data/stream.py).

Each ';'-separated source of data.train_files streams into its own shards; without data.eval_files every
data.eval_holdout-th document of each source goes to the validation shards instead, as in training from files.
"""

import collections
import json
import os
import pathlib
import shutil

import ml_collections
import numpy as np

from llm_jax.data import corpus, prepared, units
from llm_jax.data.encode import file_units, text_units
from llm_jax.data.pipeline import source_groups, source_options
from llm_jax.data.sources import DataError, SourceStats
from llm_jax.data.stream import TMP_SUFFIX, ShardWriter, StreamPacker, Unigram, baseline
from llm_jax.data.tokenizer import Tokenizer, make_tokenizer
from llm_jax.objectives import Objective, make_objective


class Split:
    """One split's packer, shard writer and unigram counts."""

    def __init__(self, out: pathlib.Path, prefix: str, cfg: ml_collections.ConfigDict, tokenizer: Tokenizer,
                 objective: Objective, dtype: np.dtype, rows_per_shard: int, unigram: Unigram):
        self.packer = StreamPacker(objective.row_len(), cfg.data.packing, tokenizer.specials)
        self.writer = ShardWriter(out, prefix, dtype, rows_per_shard)
        self.unigram, self.objective, self.docs, self.tokens = unigram, objective, 0, 0
        self.lengths = collections.Counter()  # documents by bit length of their token count: bucket b holds 2^(b-1)..

    def add(self, doc: np.ndarray) -> None:
        self.docs += 1
        self.lengths[len(doc).bit_length()] += 1
        for rows in self.packer.add(doc):
            self._write(rows)

    def finish(self) -> dict:
        for rows in self.packer.finish():
            self._write(rows)
        shards = self.writer.close()
        return {"rows": self.writer.rows, "shards": [s.name for s in shards], "sha256": [s.sha256 for s in shards],
                "documents": self.docs, "tokens": self.tokens,
                "length_histogram": [self.lengths[b] for b in range(max(self.lengths, default=0) + 1)]}

    def _write(self, rows: dict) -> None:
        self.writer.write(rows)
        self.unigram.add(self.objective.scored(rows))
        self.tokens += int((rows["segment_ids"] != 0).sum())


def _none_with_text(what: str, role: str, d: ml_collections.ConfigDict) -> DataError:
    return DataError(f"{what}: no {role} documents with text (all empty, or skipped as bad input); check the "
                     f"files, data.text_field={d.text_field!r} and data.bad_json / data.bad_utf8")


def prepare_data(cfg: ml_collections.ConfigDict, out: str, rows_per_shard: int = prepared.ROWS_PER_SHARD) -> dict:
    """Stream the configured corpus into shards under `out`, then write meta.json (see data/prepared.py)."""
    if rows_per_shard < 1:
        raise DataError(f"--rows-per-shard must be at least 1 (got {rows_per_shard})")
    d = cfg.data
    tokenizer = make_tokenizer(d.tokenizer, d.tokenizer_path)
    objective = make_objective(cfg, tokenizer)
    directory = pathlib.Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "meta.json").unlink(missing_ok=True)  # no meta.json: an unfinished preparation
    for stale in directory.glob(f"*.arrayrecord{TMP_SUFFIX}"):  # half-written shards of an interrupted run
        stale.unlink()
    # Token ids are below the vocabulary size and segment ids at most row_len: the shards' dtype is known up front.
    dtype = np.dtype(np.uint16 if max(tokenizer.vocab_size - 1, objective.row_len()) < 2**16 else np.int32)
    stats, opts = SourceStats(), source_options(d)

    train_counts, validation_counts = Unigram(tokenizer.vocab_size), Unigram(tokenizer.vocab_size)

    def split(prefix: str, counts: Unigram) -> Split:
        return Split(directory, prefix, cfg, tokenizer, objective, dtype, rows_per_shard, counts)

    if d.corpus == "shakespeare":
        groups = [("shakespeare", text_units(corpus.documents("train")))]
        eval_units = text_units(corpus.documents("validation"))
    else:
        groups = [(g, file_units(g)) for g in source_groups(d.train_files)]
        eval_units = file_units(d.eval_files) if d.eval_files else None
    # Tokenize every unit (in parallel, skipping those a killed run finished), then pack them in input order.
    work = directory / units.WORK
    work.mkdir(exist_ok=True)
    every_unit = [u for _, us in groups for u in us] + (eval_units or [])
    jobs = [units.Job(i, u, str(work), (d.tokenizer, d.tokenizer_path), tokenizer.identity()["hash"], opts)
            for i, u in enumerate(every_unit)]
    for summary in units.run(jobs, d.workers):
        stats.counts.update(collections.Counter(summary["stats"]))
    group_jobs, at = [], 0
    for _, us in groups:
        group_jobs.append(jobs[at:at + len(us)])
        at += len(us)

    validation, train = split("validation", validation_counts), []
    every = d.eval_holdout
    for i, (what, _) in enumerate(groups):
        part, held = split(f"train-{i}", train_counts), validation.docs
        docs = (doc for job in group_jobs[i] for doc in units.documents(job))
        for n, doc in enumerate(docs):
            (validation if eval_units is None and n % every == every - 1 else part).add(doc)
        if not part.docs:
            raise _none_with_text(what, "training", d)
        if eval_units is None and validation.docs == held:
            raise DataError(f"{what}: only {part.docs} documents, too few to hold out 1 in {every} for "
                            "validation; set data.eval_files or lower data.eval_holdout")
        train.append(part)
    if eval_units is not None:
        for doc in (doc for job in jobs[at:] for doc in units.documents(job)):
            validation.add(doc)
        if not validation.docs:
            raise _none_with_text(d.eval_files, "validation", d)
    sources = [t.finish() for t in train]
    held_out = validation.finish()
    loss, accuracy = baseline(train_counts, validation_counts)
    meta = {"tokenizer": tokenizer.identity(), "seq_len": cfg.train.seq_len, "row_len": objective.row_len(),
            "objective": objective.name, "packing": d.packing,
            "sources": source_groups(d.train_files) if d.corpus == "files" else [d.corpus],
            "unigram_loss": loss, "unigram_accuracy": accuracy, "tokens": sum(t.tokens for t in train),
            "stats": dict(stats.counts), "format_version": prepared.FORMAT_VERSION, "dtype": dtype.name,
            "train": sources, "validation": held_out}
    (directory / "meta.json.tmp").write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(directory / "meta.json.tmp", directory / "meta.json")
    shutil.rmtree(work)  # the shards are whole: the tokenized units are not needed to resume any more
    return meta

