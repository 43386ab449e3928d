"""From a config to everything a run needs: checked config, mesh, model, data, sharded state, jitted steps.

`llm-jax train` and `llm-jax bench` both start here, so a benchmark measures exactly the training code path.
"""

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from llm_jax.checkpoint.params import CheckpointError, check_source
from llm_jax.config.load import ConfigError
from llm_jax.config.validate import finalize, validate
from llm_jax.data.pipeline import Data, check_sources, make_data
from llm_jax.data.tokenizer import Tokenizer, make_tokenizer
from llm_jax.models import build_model
from llm_jax.objectives import Objective, extra_tokens, make_objective
from llm_jax.parallel.mesh import mesh_for, mesh_granules
from llm_jax.parallel.sharding import batch_sharding, replicated
from llm_jax.train.evaluate import Evaluator, make_evaluator
from llm_jax.train.fits import check_fits, check_size
from llm_jax.train.guard import GuardOptions
from llm_jax.train.optimizer import make_optimizer
from llm_jax.train.state import StepOptions, TrainState, create_train_state, param_shardings
from llm_jax.train.step import train_step


class Prepared(NamedTuple):
    cfg: ml_collections.ConfigDict  # finalized
    mesh: Mesh
    model: nn.Module
    tokenizer: Tokenizer
    params_sharding: Any  # NamedShardings of the parameters, checked against the rules
    objective: Objective


def prepare(cfg: ml_collections.ConfigDict, devices: list | None = None, check_data: bool = True,
            fit_copies: int = 3) -> Prepared:
    """Everything that can fail cheaply, before any compilation: finalize + validate the config, build the mesh
    and model, and check that every parameter has a sharding rule that divides it (and, unless `check_data` is
    False, as for sampling, that the data sources exist). `fit_copies`: the copies of the parameters that must fit
    in the devices' memory (3 to train, 1 to evaluate, 0: no check, as for `llm-jax plan`)."""
    tokenizer = make_tokenizer(cfg.data.tokenizer, cfg.data.tokenizer_path)
    cfg = finalize(cfg, tokenizer.vocab_size + extra_tokens(cfg, tokenizer.specials))  # [MASK] or sentinels if new
    all_devices = list(devices) if devices is not None else jax.devices()
    if cfg.train.per_device_batch:
        cfg.train.global_batch = cfg.train.per_device_batch * len(all_devices)
    num_granules = mesh_granules(cfg.mesh, all_devices)
    validate(cfg, len(all_devices), jax.process_count(), num_granules)
    mesh = mesh_for(cfg, devices, num_granules)
    if check_data:
        check_sources(cfg.data)
    if cfg.checkpoint.init_from:
        try:
            check_source(cfg.checkpoint.init_from)
        except CheckpointError as e:
            raise ConfigError(f"checkpoint.init_from: {e}") from None
    if fit_copies:
        check_size(cfg, all_devices, fit_copies)
    objective = make_objective(cfg, tokenizer)
    model = build_model(cfg.model)
    params_sh = param_shardings(model, objective.spec(), mesh, cfg.sharding.rules)
    return Prepared(cfg, mesh, model, tokenizer, params_sh, objective)


@dataclasses.dataclass
class Run:
    cfg: ml_collections.ConfigDict  # finalized
    mesh: Mesh
    rules: tuple
    data: Data
    objective: Objective
    state: TrainState
    state_sharding: TrainState  # the same tree, of NamedShardings
    batch_sharding: NamedSharding
    jit_train: jax.stages.Wrapped  # (state, batch) -> (state, metrics), state donated
    evaluate: Evaluator  # params -> {loss, perplexity, bpb} on the fixed validation batches

    @property
    def num_params(self) -> int:
        return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(self.state.params))


def optimizer_and_options(cfg: ml_collections.ConfigDict,
                          objective: Objective) -> tuple[optax.GradientTransformation, StepOptions]:
    """The optimizer and the train step's static options, as `train.*`, `optimizer.*` and the objective say."""
    t = cfg.train
    tx, schedule = make_optimizer(cfg.optimizer, t.steps)
    guard = GuardOptions(skip_nonfinite=t.nan_policy == "skip", spike_k=t.spike_k, window=t.spike_window)
    return tx, StepOptions(loss=objective.loss, z_loss=t.z_loss, loss_chunk=t.loss_chunk, grad_accum=t.grad_accum,
                           schedule=schedule, guard=guard)


def build_run(cfg: ml_collections.ConfigDict, devices: list | None = None, prepared: Prepared | None = None) -> Run:
    """`prepared`: the result of prepare(cfg, devices) if the caller already has it."""
    cfg, mesh, model, tokenizer, params_sh, objective = prepared or prepare(cfg, devices)
    t = cfg.train
    tx, options = optimizer_and_options(cfg, objective)
    # Here, not in prepare(): `llm-jax plan` sizes bigger jobs.
    check_fits(cfg, model, tx, params_sh, mesh, objective.spec())
    data = make_data(cfg, tokenizer, jax.process_index(), jax.process_count())
    rules = tuple(tuple(r) for r in cfg.sharding.rules)
    state, state_sh = create_train_state(model, tx, options, t.seed, objective.spec(), mesh, rules, params_sh)
    batch_sh = batch_sharding(mesh, rules)
    jit_train = jax.jit(train_step, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, replicated(mesh)),
                        donate_argnums=0)
    evaluator = make_evaluator(model, mesh, tokenizer, cfg.model.vocab_size, state_sh.params, batch_sh, data.eval,
                               t.eval_batches, t.loss_chunk)
    return Run(cfg, mesh, rules, data, objective, state, state_sh, batch_sh, jit_train, evaluator)

