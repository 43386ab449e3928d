"""`llm-jax data bench`: how fast the input pipeline alone produces tokens, to compare with what a step consumes."""

import json
import time

import ml_collections

from llm_jax.data.pipeline import make_data
from llm_jax.data.tokenizer import make_tokenizer


def bench_data(cfg: ml_collections.ConfigDict, batches: int = 200, warmup: int = 5) -> dict:
    """Time building the data (read + tokenize + pack, or opening prepared shards), then `batches` loader batches."""
    tokenizer = make_tokenizer(cfg.data.tokenizer, cfg.data.tokenizer_path)
    start = time.perf_counter()
    data = make_data(cfg, tokenizer)
    build_s = time.perf_counter() - start
    t = cfg.train
    tokens_per_batch = t.global_batch * t.seq_len
    try:
        for _ in range(warmup):  # starts worker processes and fills the prefetch buffer
            next(data.train)
        start = time.perf_counter()
        for _ in range(batches):
            next(data.train)
        loop_s = time.perf_counter() - start
    finally:
        data.train.close()
    result = {"tokens_per_s": batches * tokens_per_batch / loop_s, "batches_per_s": batches / loop_s,
              "build_s": build_s, "train_rows": data.train.num_rows, "workers": cfg.data.workers}
    print(f"data: {cfg.data.corpus} | {data.train.num_rows:,} train rows of {t.seq_len + 1} tokens | "
          f"tokenizer {tokenizer.kind} | workers {cfg.data.workers} | {data.stats.summary()}")
    print(f"build (read, tokenize, pack): {build_s:.2f}s")
    print(f"loader: {batches} batches of {t.global_batch} x {t.seq_len} in {loop_s:.3f}s = "
          f"{result['batches_per_s']:,.0f} batches/s = {result['tokens_per_s']:,.0f} tokens/s")
    print(json.dumps(result))
    return result
