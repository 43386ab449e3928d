"""From config to loaders: corpus -> tokenizer -> packed rows -> host-local batches."""

import dataclasses

import ml_collections
import numpy as np

from llm_jax.data import corpus
from llm_jax.data.loader import BatchLoader, pack_documents
from llm_jax.data.tokenizer import Tokenizer, make_tokenizer


@dataclasses.dataclass
class Data:
    tokenizer: Tokenizer
    train: BatchLoader
    eval: BatchLoader
    unigram_loss: float  # nats/token of validation targets under the training unigram distribution


def unigram_loss(train_rows: dict, eval_rows: dict, vocab_size: int) -> float:
    """The loss of the best context-free model: a baseline any trained model must beat by far."""
    def targets(rows):
        seg = rows["segment_ids"]
        mask = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0)
        return rows["tokens"][:, 1:][mask]
    counts = np.bincount(targets(train_rows), minlength=vocab_size).astype(np.float64) + 1.0  # add-one
    log_p = np.log(counts / counts.sum())
    return float(-log_p[targets(eval_rows)].mean())


def make_data(cfg: ml_collections.ConfigDict, process_index: int = 0, process_count: int = 1) -> Data:
    tokenizer = make_tokenizer(cfg.data.tokenizer, cfg.data.tokenizer_path)
    row_len = cfg.train.seq_len + 1
    rows = {split: pack_documents([tokenizer.encode(d) for d in corpus.documents(split)], row_len)
            for split in ("train", "validation")}
    t = cfg.train
    return Data(
        tokenizer=tokenizer,
        train=BatchLoader(rows["train"], t.global_batch, t.seed, True, process_index, process_count),
        eval=BatchLoader(rows["validation"], t.global_batch, t.seed, False, process_index, process_count),
        unigram_loss=unigram_loss(rows["train"], rows["validation"], tokenizer.vocab_size),
    )
