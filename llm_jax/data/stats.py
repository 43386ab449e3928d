"""`llm-jax data stats DIR`: what a prepared directory holds, read from its meta.json alone (no shard is opened),
and how many epochs of each source the configured run would read."""

import json

import ml_collections

from llm_jax.data.pipeline import parse_weights
from llm_jax.data.prepared import read_meta


def _bucket(b: int) -> str:
    return "0" if b == 0 else f"{2 ** (b - 1)}-{2 ** b - 1}"


def describe(directory: str, cfg: ml_collections.ConfigDict) -> tuple[list[str], dict]:
    """Report lines and the same figures as a dict. Effective epochs: rows a run of train.steps x
    train.global_batch reads from each source (by data.weights, else in proportion to rows) over its rows."""
    meta = read_meta(directory)
    row_len, sources = meta["row_len"], meta["train"]
    named = [*zip(meta.get("sources", []), sources, strict=False)] or [("?", s) for s in sources]
    rows = [s["rows"] for s in sources]
    weights = parse_weights(cfg.data, len(rows)) or rows
    weights = [w / sum(weights) for w in weights]
    read = cfg.train.steps * cfg.train.global_batch
    table, figures = [], {"directory": directory, "row_len": row_len, "sources": []}
    for (name, s), w in zip([*named, ("validation", meta["validation"])], [*weights, None], strict=True):
        tokens = s.get("tokens")
        efficiency = tokens / (s["rows"] * row_len) if tokens is not None and s["rows"] else None
        epochs = read * w / s["rows"] if w is not None and s["rows"] else None
        figures["sources"].append({"name": name, "rows": s["rows"], "documents": s.get("documents"),
                                   "tokens": tokens, "packing_efficiency": efficiency, "weight": w,
                                   "epochs": epochs, "length_histogram": s.get("length_histogram")})
        table.append(f"  {name[:38]:<38} {s['rows']:>12,} {_n(s.get('documents')):>11} {_n(tokens):>15} "
                     f"{'-' if efficiency is None else f'{efficiency:.1%}':>10} "
                     f"{'-' if w is None else f'{w:.3f}':>7} {'-' if epochs is None else f'{epochs:.3g}':>8}")
    lines = [f"prepared {directory}: tokenizer {meta['tokenizer'].get('kind', '?')} "
             f"({meta['tokenizer'].get('vocab_size', '?')} ids), objective {meta.get('objective', 'causal_lm')}, "
             f"rows of {row_len} tokens, packing {meta.get('packing', '?')}, {meta['dtype']} on disk",
             f"  {'source':<38} {'rows':>12} {'documents':>11} {'tokens':>15} {'packed':>10} {'weight':>7} "
             f"{'epochs':>8}", *table,
             f"epochs: a run of train.steps={cfg.train.steps} x train.global_batch={cfg.train.global_batch} rows; "
             "packed: document tokens (with <bos>/<eos>) per row position"]
    histograms = [(f["name"], f["length_histogram"]) for f in figures["sources"] if f["length_histogram"]]
    if histograms:
        lines.append("document lengths in tokens (documents per range)")
        for name, counts in histograms:
            lines.append(f"  {name[:38]:<38} " + ", ".join(f"{_bucket(b)}: {c:,}" for b, c in enumerate(counts) if c))
    if "documents" not in sources[0]:
        lines.append("note: prepared before documents and lengths were recorded; prepare again to see them")
    return lines, figures


def _n(x) -> str:
    return "-" if x is None else f"{x:,}"


def print_stats(directory: str, cfg: ml_collections.ConfigDict) -> None:
    lines, figures = describe(directory, cfg)
    print("\n".join(lines))
    print(json.dumps(figures))
