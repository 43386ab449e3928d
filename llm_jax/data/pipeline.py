"""From config to loaders: sources -> tokenized documents -> packed rows -> grain loaders of host-local batches.

`data.train_files` may name several sources separated by ';' (each a comma-separated list of paths or globs);
they are mixed by `data.weights` (default: in proportion to their rows).
"""

import dataclasses
import math
from collections.abc import Sequence

import ml_collections
import numpy as np

from llm_jax.data import corpus, prepared
from llm_jax.data.encode import encode_units, file_units, text_units
from llm_jax.data.loader import Loader, MemoryRows, eval_stream, train_stream
from llm_jax.data.packing import Rows, pack_documents
from llm_jax.data.sources import DataError, SourceOptions, SourceStats, expand
from llm_jax.data.stream import Unigram, baseline
from llm_jax.data.tokenizer import Tokenizer, make_tokenizer
from llm_jax.objectives import Objective, ToExample, make_objective


@dataclasses.dataclass
class Data:
    tokenizer: Tokenizer
    train: Loader
    eval: Loader
    unigram_loss: float  # nats/token of validation targets under the training unigram distribution
    unigram_accuracy: float  # of always guessing the most frequent training target
    stats: SourceStats
    weights: list[float]  # of the training sources, normalised


def source_groups(train_files: str) -> list[str]:
    return [g.strip() for g in train_files.split(";") if g.strip()]


def parse_weights(d: ml_collections.ConfigDict, num_sources: int) -> list[float] | None:
    """`data.weights` as floats, one per source; None when not given."""
    if not d.weights.strip():
        return None
    try:
        weights = [float(w) for w in d.weights.split(",")]
    except ValueError:
        raise DataError(f"data.weights={d.weights!r} is not a comma-separated list of numbers") from None
    if len(weights) != num_sources or min(weights) < 0 or sum(weights) <= 0:
        raise DataError(f"data.weights={d.weights!r} needs {num_sources} non-negative numbers (one per ';'-separated "
                        "source in data.train_files) that do not sum to 0")
    return weights


def unigram_baseline(train_tokens: np.ndarray, eval_tokens: np.ndarray, vocab_size: int) -> tuple[float, float]:
    """The loss of the best context-free model, and the accuracy of always guessing the most frequent token:
    baselines any trained model must beat by far."""
    train, held = Unigram(vocab_size), Unigram(vocab_size)
    train.add(train_tokens)
    held.add(eval_tokens)
    return baseline(train, held)


def rows_baseline(objective: Objective, train: list[Rows], validation: Rows, vocab_size: int) -> tuple[float, float]:
    """unigram_baseline over the tokens the objective's targets are drawn from."""
    return unigram_baseline(np.concatenate([objective.scored(r) for r in train]), objective.scored(validation),
                            vocab_size)


def source_options(d: ml_collections.ConfigDict) -> SourceOptions:
    return SourceOptions(format=d.format, text_field=d.text_field, text_split=d.text_split, bad_utf8=d.bad_utf8,
                         bad_json=d.bad_json)


def check_sources(d: ml_collections.ConfigDict) -> None:
    """Cheap checks before anything expensive: every pattern matches a file, the weights fit the sources."""
    if d.corpus == "files":
        groups = source_groups(d.train_files)
        for group in groups:
            expand(group)
        if d.eval_files:
            expand(d.eval_files)
        parse_weights(d, len(groups))
    elif d.corpus == "prepared":
        for directory in prepared.directories(d.prepared_dir):
            prepared.read_meta(directory)


def hold_out(docs: list, every: int, what: str) -> tuple[list, list]:
    """Every `every`-th document goes to validation: a split that depends on the data alone."""
    held = [x for i, x in enumerate(docs) if i % every == every - 1]
    if not held:
        raise DataError(f"{what}: only {len(docs)} documents, too few to hold out 1 in {every} for validation; "
                        "set data.eval_files or lower data.eval_holdout")
    return [x for i, x in enumerate(docs) if i % every != every - 1], held


def tokenized_splits(cfg: ml_collections.ConfigDict, tokenizer: Tokenizer,
                     stats: SourceStats) -> tuple[list[list[np.ndarray]], list[np.ndarray]]:
    """The token ids of the training documents of each source, and of the validation documents."""
    d = cfg.data
    opts = source_options(d)

    def encode(units):
        return encode_units(units, tokenizer, opts, stats, d.workers)

    if d.corpus == "shakespeare":
        return [encode(text_units(corpus.documents("train")))], encode(text_units(corpus.documents("validation")))

    def some(docs: list, files: str, role: str) -> list:
        if not docs:  # every document empty or skipped: refuse here, naming the files, not deep in packing
            raise DataError(f"{files}: no {role} documents with text (all empty, or skipped as bad input); check the "
                            f"files, data.text_field={d.text_field!r} and data.bad_json / data.bad_utf8")
        return docs

    train, validation = [], []
    for group in source_groups(d.train_files):
        docs = some(encode(file_units(group)), group, "training")
        if d.eval_files:
            train.append(docs)
        else:
            kept, held = hold_out(docs, d.eval_holdout, group)
            train.append(kept)
            validation += held
    if d.eval_files:
        validation = some(encode(file_units(d.eval_files)), d.eval_files, "validation")
    return train, validation


def pack_splits(cfg: ml_collections.ConfigDict, tokenizer: Tokenizer, stats: SourceStats,
                row_len: int) -> tuple[list[Rows], Rows]:
    train, validation = tokenized_splits(cfg, tokenizer, stats)
    specials = tokenizer.specials
    return ([pack_documents(docs, row_len, cfg.data.packing, specials) for docs in train],
            pack_documents(validation, row_len, cfg.data.packing, specials))


def make_loaders(cfg: ml_collections.ConfigDict, objective: Objective, train_sources: Sequence, eval_source,
                 process_index: int, process_count: int) -> tuple[Loader, Loader, list[float]]:
    d, t = cfg.data, cfg.train
    sizes = [len(s) for s in train_sources]
    weights = parse_weights(d, len(sizes)) or sizes
    weights = [w / sum(weights) for w in weights]
    kwargs = dict(process_index=process_index, process_count=process_count, workers=d.workers, threads=d.threads,
                  prefetch=d.prefetch)
    to_example = ToExample(objective)
    return (Loader(train_stream(train_sources, weights, t.seed, to_example), t.global_batch, sum(sizes), **kwargs),
            Loader(eval_stream([eval_source], t.seed, to_example), t.global_batch, len(eval_source), **kwargs),
            weights)


def make_data(cfg: ml_collections.ConfigDict, tokenizer: Tokenizer | None = None, process_index: int = 0,
              process_count: int = 1) -> Data:
    tokenizer = tokenizer or make_tokenizer(cfg.data.tokenizer, cfg.data.tokenizer_path)
    objective = make_objective(cfg, tokenizer)
    if cfg.data.corpus == "prepared":
        train_sources, eval_source, meta = prepared.open_sources(cfg, tokenizer, objective.row_len())
        stats, baseline = prepared.stats_of(meta), (meta["unigram_loss"], meta.get("unigram_accuracy", math.nan))
    else:
        stats = SourceStats()
        train_rows, eval_rows = pack_splits(cfg, tokenizer, stats, objective.row_len())
        baseline = rows_baseline(objective, train_rows, eval_rows, tokenizer.vocab_size)
        train_sources, eval_source = [MemoryRows(r) for r in train_rows], MemoryRows(eval_rows)
    train, evaluation, weights = make_loaders(cfg, objective, train_sources, eval_source, process_index,
                                              process_count)
    return Data(tokenizer, train, evaluation, *baseline, stats, weights)

