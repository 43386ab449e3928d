"""What the loop does besides stepping that depends on the model family or the objective, registered by name.

`sample`: the text the loop writes to TensorBoard and samples.txt (a decoder continues the prompt; an encoder
fills in masked tokens of it; an encoder-decoder writes what follows it after a sentinel). `evaluate`: extra
metrics merged into each evaluation. `on_save`: called after each checkpoint save starts. A new family or
objective registers here; the loop never asks which one it runs.
"""

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import numpy as np

from llm_jax.data.tokenizer import Specials
from llm_jax.models.layout import on_mesh
from llm_jax.train.sample import generate

if TYPE_CHECKING:
    from llm_jax.objectives import Objective
    from llm_jax.train.setup import Run


def _decoder_continue(model, params, prompts: list[np.ndarray], max_new: int, context: int, sentinel: int,
                      specials: Specials, **sampling) -> list[np.ndarray]:
    return generate(model, params, prompts, max_new, context, specials=specials, **sampling)


def _seq2seq_continue(model, params, prompts: list[np.ndarray], max_new: int, context: int, sentinel: int,
                      specials: Specials, **sampling) -> list[np.ndarray]:
    """The encoder reads <bos> prompt <sentinel 0>, as if the rest of the document had been dropped; the decoder
    writes it back after the sentinel, starting from the tokenizer's decoder start and ending at its eos."""
    from llm_jax.train.sample_seq2seq import generate_seq2seq

    rows = [np.concatenate([[specials.bos], p, [sentinel]])[-context:].astype(np.int32).tolist() for p in prompts]
    return generate_seq2seq(model, params, rows, max_new, specials=specials, **sampling)


# How a family continues prompts (token ids, without markers) -> the new token ids of each. Encoders do not.
CONTINUATIONS = {"decoder": _decoder_continue, "encoder_decoder": _seq2seq_continue}


def continue_prompts(family: str, model, params, prompts: list[np.ndarray], max_new: int, context: int,
                     sentinel: int, specials: Specials, **sampling) -> list[np.ndarray]:
    """New token ids after each prompt (`sentinel`: the span-corruption objective's first sentinel, T5's
    <extra_id_0> where the tokenizer has it; `specials`: the tokenizer's special ids); `sampling`: temperature,
    top_k, top_p, seed. Run inside on_mesh for sharded parameters."""
    if family not in CONTINUATIONS:
        raise ValueError(f"model.family={family!r} does not generate text; it fills in masked tokens (the run's "
                         "samples.txt shows it)")
    return CONTINUATIONS[family](model, params, prompts, max_new, context, sentinel, specials, **sampling)


def first_sentinel(objective: "Objective") -> int:
    """The id an encoder-decoder reads where text was dropped: the objective's first sentinel (T5's <extra_id_0>
    where the tokenizer has it); a decoder ignores it."""
    return int(objective.sentinel_ids[0]) if objective.sentinel_ids else objective.first_extra_id


def sample_continuation(run: "Run") -> str:
    s, tok = run.cfg.sample, run.data.tokenizer
    with on_mesh(run.mesh, run.rules):
        new_ids = continue_prompts(run.cfg.model.family, run.state.model, run.state.params, [tok.encode(s.prompt)],
                                   s.max_new_tokens, run.cfg.train.seq_len, first_sentinel(run.objective), tok.specials,
                                   temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, seed=s.seed)[0]
    return s.prompt + tok.decode(new_ids)  # extra ids (sentinels) are not text: decode drops them


def sample_encoder(run: "Run") -> str:
    """Every 7th character-or-piece of the prompt masked, then filled in by the model's most likely token:
    'masked: ... | filled: ...'."""
    from llm_jax.train.step import forward

    tok, mask_id = run.data.tokenizer, run.objective.mask_id  # an encoder learns masked_lm
    ids = np.concatenate([[tok.specials.bos], tok.encode(run.cfg.sample.prompt), [tok.specials.eos]])
    ids = ids[: run.cfg.train.seq_len]
    hidden = np.zeros(len(ids), bool)
    hidden[1:-1:7] = True
    masked = np.where(hidden, mask_id, ids).astype(np.int32)[None]
    example = {"inputs": masked, "segment_ids": np.ones_like(masked),
               "positions": np.arange(masked.shape[1], dtype=np.int32)[None]}
    with on_mesh(run.mesh, run.rules):  # jitted: one row may not divide the mesh, which only eager ops refuse
        logits = np.asarray(jax.jit(forward, static_argnums=0)(run.state.model, run.state.params, example))[0]
    filled = np.where(hidden, logits.argmax(-1), ids)

    def text(row: np.ndarray) -> str:
        return "".join("[MASK]" if t == mask_id else tok.decode([t]) for t in row[1:-1])

    return f"masked: {text(masked[0])}\nfilled: {text(filled)}"


@dataclasses.dataclass(frozen=True)
class Hooks:
    sample: Callable[["Run"], str]
    evaluate: tuple[Callable[["Run"], dict[str, float]], ...] = ()
    on_save: tuple[Callable[["Run", int], None], ...] = ()


SAMPLERS: dict[str, Callable[["Run"], str]] = {
    "decoder": sample_continuation, "encoder": sample_encoder, "encoder_decoder": sample_continuation}
EVALUATIONS: dict[str, tuple[Callable[["Run"], dict[str, float]], ...]] = {}  # by objective name
ON_SAVE: dict[str, tuple[Callable[["Run", int], None], ...]] = {}  # by objective name


def hooks_for(run: "Run") -> Hooks:
    name = run.objective.name
    return Hooks(SAMPLERS[run.cfg.model.family], EVALUATIONS.get(name, ()), ON_SAVE.get(name, ()))
