"""Evaluation: mean loss per target token, perplexity, bits per byte and accuracy (the most likely token is the
target) over the same validation batches every time."""

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from llm_jax.data.loader import Loader
from llm_jax.data.tokenizer import Tokenizer
from llm_jax.parallel.sharding import replicated, to_global
from llm_jax.train.step import eval_step


@dataclasses.dataclass
class Evaluator:
    jit_eval: jax.stages.Wrapped  # (params, batch, token_bytes_V) -> {loss_sum, tokens, bytes, correct}
    loader: Loader  # the validation split
    batch_sharding: NamedSharding
    token_bytes: jax.Array  # [V] UTF-8 bytes per token id
    num_batches: int

    def __call__(self, params: Any) -> dict[str, float]:
        """{loss, perplexity, bpb, accuracy} over the first `num_batches` validation batches."""
        totals = [self.jit_eval(params, to_global(self.loader.batch_at(i), self.batch_sharding), self.token_bytes)
                  for i in range(self.num_batches)]
        totals = jax.device_get(totals)
        loss_sum = sum(float(t["loss_sum"]) for t in totals)
        tokens, nbytes = sum(float(t["tokens"]) for t in totals), sum(float(t["bytes"]) for t in totals)
        loss = loss_sum / max(tokens, 1.0)
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),
                "bpb": loss_sum / (math.log(2) * nbytes) if nbytes else math.nan,
                "accuracy": sum(float(t["correct"]) for t in totals) / max(tokens, 1.0)}


def make_evaluator(model: nn.Module, mesh: Mesh, tokenizer: Tokenizer, vocab_size: int, params_sh: Any,
                   batch_sh: NamedSharding, loader: Loader, num_batches: int, loss_chunk: int = 0) -> Evaluator:
    """A jitted eval step on the parameters alone: `llm-jax eval` needs no optimizer state. `loss_chunk`:
    train.loss_chunk, so that evaluation never holds the whole batch's logits either."""
    token_bytes = np.zeros(vocab_size, np.int32)  # the model's padding ids stand for no text
    token_bytes[: tokenizer.vocab_size] = tokenizer.token_bytes()
    jit_eval = jax.jit(functools.partial(eval_step, model, loss_chunk=loss_chunk),
                       in_shardings=(params_sh, batch_sh, replicated(mesh)), out_shardings=replicated(mesh))
    token_bytes_V = jax.make_array_from_callback(token_bytes.shape, replicated(mesh), lambda i: token_bytes[i])
    return Evaluator(jit_eval, loader, batch_sh, token_bytes_V, num_batches)
