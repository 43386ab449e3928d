"""From config to loaders: documents -> tokenizer -> packed rows -> host-local batches."""

import dataclasses

import ml_collections
import numpy as np

from llm_jax.data import corpus
from llm_jax.data.loader import BatchLoader, pack_documents
from llm_jax.data.sources import DataError, SourceOptions, SourceStats, expand, read_documents
from llm_jax.data.tokenizer import Tokenizer, make_tokenizer


@dataclasses.dataclass
class Data:
    tokenizer: Tokenizer
    train: BatchLoader
    eval: BatchLoader
    unigram_loss: float  # nats/token of validation targets under the training unigram distribution
    stats: SourceStats


def unigram_loss(train_rows: dict, eval_rows: dict, vocab_size: int) -> float:
    """The loss of the best context-free model: a baseline any trained model must beat by far."""
    def targets(rows):
        seg = rows["segment_ids"]
        mask = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0)
        return rows["tokens"][:, 1:][mask]
    counts = np.bincount(targets(train_rows), minlength=vocab_size).astype(np.float64) + 1.0  # add-one
    log_p = np.log(counts / counts.sum())
    return float(-log_p[targets(eval_rows)].mean())


def source_options(d: ml_collections.ConfigDict) -> SourceOptions:
    return SourceOptions(format=d.format, text_field=d.text_field, text_split=d.text_split, bad_utf8=d.bad_utf8,
                         bad_json=d.bad_json)


def check_sources(d: ml_collections.ConfigDict) -> None:
    """Cheap checks before anything expensive: every pattern matches a file."""
    if d.corpus == "files":
        expand(d.train_files)
        if d.eval_files:
            expand(d.eval_files)


def split_documents(d: ml_collections.ConfigDict, stats: SourceStats) -> dict[str, list[str]]:
    if d.corpus == "shakespeare":
        return {split: corpus.documents(split) for split in ("train", "validation")}
    opts = source_options(d)
    docs = list(read_documents(d.train_files, opts, stats))
    if d.eval_files:
        return {"train": docs, "validation": list(read_documents(d.eval_files, opts, stats))}
    held_out = {i for i in range(len(docs)) if i % d.eval_holdout == d.eval_holdout - 1}
    if not held_out:
        raise DataError(f"only {len(docs)} training documents: too few to hold out 1 in {d.eval_holdout} for "
                         "validation; set data.eval_files or lower data.eval_holdout")
    return {"train": [x for i, x in enumerate(docs) if i not in held_out],
            "validation": [x for i, x in enumerate(docs) if i in held_out]}


def make_data(cfg: ml_collections.ConfigDict, tokenizer: Tokenizer | None = None, process_index: int = 0,
              process_count: int = 1) -> Data:
    tokenizer = tokenizer or make_tokenizer(cfg.data.tokenizer, cfg.data.tokenizer_path)
    stats = SourceStats()
    row_len = cfg.train.seq_len + 1
    rows = {split: pack_documents([tokenizer.encode(doc) for doc in docs], row_len)
            for split, docs in split_documents(cfg.data, stats).items()}
    t = cfg.train
    return Data(
        tokenizer=tokenizer,
        train=BatchLoader(rows["train"], t.global_batch, t.seed, True, process_index, process_count),
        eval=BatchLoader(rows["validation"], t.global_batch, t.seed, False, process_index, process_count),
        unigram_loss=unigram_loss(rows["train"], rows["validation"], tokenizer.vocab_size),
        stats=stats,
    )
