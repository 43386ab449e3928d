"""A trained model for `llm-jax eval` and `llm-jax sample`: the run's saved config and tokenizer, and its
parameters placed on this machine's mesh (sharded as the config's rules say, so a model too big for one device
still loads)."""

import dataclasses
import pathlib
from typing import Any

import flax.linen as nn
import jax
import ml_collections
from jax.sharding import Mesh

from llm_jax.checkpoint.manager import check_compatible
from llm_jax.checkpoint.params import abstract_like, load_params, saved_meta
from llm_jax.config.load import ConfigError, config_from_saved
from llm_jax.data.pipeline import make_data
from llm_jax.data.tokenizer import Tokenizer
from llm_jax.models.layout import on_mesh
from llm_jax.parallel.runtime import init_runtime
from llm_jax.parallel.sharding import batch_sharding
from llm_jax.train.evaluate import make_evaluator
from llm_jax.train.setup import prepare
from llm_jax.train.state import abstract_params


@dataclasses.dataclass
class Trained:
    cfg: ml_collections.ConfigDict  # finalized
    mesh: Mesh
    rules: tuple
    model: nn.Module
    tokenizer: Tokenizer
    params: Any
    source: pathlib.Path  # the checkpoint step directory or the exported file read
    step: int | None
    dropped_keys: list[str]  # keys of the saved config that this version no longer has


def saved_config(path: pathlib.Path, step: int | None) -> tuple[pathlib.Path, dict]:
    """The checkpoint step directory (or parameter file, or Hugging Face directory) that `path` and `step` name,
    and the config it holds."""
    source, meta = saved_meta(path, step)
    return source, meta["config"]


def load_trained(path: str | pathlib.Path, step: int | None = None, overrides: list[str] = (),
                 check_data: bool = True) -> Trained:
    """`path`: a run's workdir (its latest checkpoint, or `step`'s), a checkpoints/<step> directory, or a file
    from `llm-jax export`. The file is data, maybe someone else's: only its model, tokenizer and data keys are used
    (see config_from_saved); how this machine runs comes from the defaults and `overrides`, `a.b=value` changes
    (e.g. the mesh, or data.tokenizer_path when the tokenizer moved)."""
    path = pathlib.Path(path)
    source, saved = saved_config(path, step)
    if not saved:
        raise ConfigError(f"{source} holds no config; it was not written by `llm-jax train` or `llm-jax export`")
    cfg, dropped, ignored = config_from_saved(saved, overrides, source=f"{source}'s config")
    if ignored:  # before anything can fail: the user may need to set some of them
        print(f"note: {source}'s config keys for how to run are not taken from a file (only model, tokenizer and "
              f"data keys are), defaults used: {', '.join(ignored)}; set any you need with --config.KEY=VALUE")
    init_runtime(cfg)
    cfg, mesh, model, tokenizer, params_sh, objective = prepare(cfg, check_data=check_data, fit_copies=1)
    abstract = abstract_like(nn.unbox(abstract_params(model, objective.spec())), params_sh)
    params, meta = load_params(source, abstract)
    check_compatible(meta, tokenizer.identity(), source)
    rules = tuple(tuple(r) for r in cfg.sharding.rules)
    step_read = int(meta["step"]) if str(meta.get("step", "")).isdigit() else None
    return Trained(cfg, mesh, rules, model, tokenizer, params, source, step_read, dropped)


def evaluate_trained(trained: Trained) -> dict[str, float]:
    """{loss, perplexity, bpb, accuracy} on the run's validation batches: the numbers its training logged at that
    step."""
    cfg, mesh = trained.cfg, trained.mesh
    data = make_data(cfg, trained.tokenizer, jax.process_index(), jax.process_count())
    try:
        params_sh = jax.tree.map(lambda x: x.sharding, trained.params)
        evaluator = make_evaluator(trained.model, mesh, trained.tokenizer, cfg.model.vocab_size, params_sh,
                                   batch_sharding(mesh, trained.rules), data.eval, cfg.train.eval_batches,
                                   cfg.train.loss_chunk)
        with on_mesh(mesh, trained.rules):
            return evaluator(trained.params)
    finally:
        data.train.close()
