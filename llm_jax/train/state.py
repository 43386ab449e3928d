"""The train state and its sharded creation. With models/, the only place that knows Flax.

The state is built abstractly first (`eval_shape`), its shardings are derived from the parameters' logical
axes, and only then is it initialised by a jit with those out_shardings: no array ever lives whole on one device.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from llm_jax.objectives.example import ExampleSpec, token_fields
from llm_jax.objectives.loss import example_loss
from llm_jax.parallel.sharding import Rules, check_rules_cover, logical_shardings, replicated
from llm_jax.train.guard import GuardOptions, init_guard


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """The train step's static settings (hashable, part of the state's tree structure)."""

    loss: Callable = example_loss  # the objective's: (logits, example, z_loss) -> (ce_sum, z_sum)
    z_loss: float = 0.0
    loss_chunk: int = 0  # >0: the loss runs over chunks of this many positions (train.loss_chunk)
    grad_accum: int = 1
    schedule: Callable | None = None  # for logging the learning rate of each step
    guard: GuardOptions = dataclasses.field(default_factory=GuardOptions)


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    guard: dict  # the bad-update guard's state (see guard.py); tiny and replicated
    model: nn.Module = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    options: StepOptions = struct.field(pytree_node=False)


def init_inputs(model: nn.Module, example: ExampleSpec | int) -> dict[str, Any]:
    """The model's arguments for a one-row batch of zeros of the example's shapes (an int: a decoder or encoder
    example of that many tokens)."""
    spec = ExampleSpec(token_fields(example)) if isinstance(example, int) else example
    return model.inputs(spec.zeros(1))


def abstract_params(model: nn.Module, example: ExampleSpec | int) -> Any:
    """Parameter shapes and logical axes (nn.Partitioned leaves) without allocating anything."""
    return jax.eval_shape(lambda rng: model.init(rng, **init_inputs(model, example))["params"], jax.random.key(0))


def param_shardings(model: nn.Module, example: ExampleSpec | int, mesh: Mesh, rules: Rules) -> Any:
    boxed = abstract_params(model, example)
    check_rules_cover(boxed, rules)
    return logical_shardings(boxed, mesh, rules)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, options: StepOptions, seed: int,
                       example: ExampleSpec | int, mesh: Mesh, rules: Rules,
                       params_sh: Any = None) -> tuple[TrainState, TrainState]:
    """A freshly initialised, sharded TrainState, and the matching tree of shardings (`params_sh`: the
    parameters' shardings when the caller already has them from `param_shardings`)."""
    if params_sh is None:
        params_sh = param_shardings(model, example, mesh, rules)

    def init(rng: jax.Array) -> TrainState:
        params = nn.unbox(model.init(rng, **init_inputs(model, example))["params"])
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          guard=init_guard(options.guard.window), model=model, tx=tx, options=options)

    rng = jax.random.key(seed)
    abstract = jax.eval_shape(init, rng)
    # Optimizer moments mirror the parameters' shardings; scalars (step counts) are replicated.
    opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract.opt_state, params_sh,
                                   transform_non_params=lambda _: replicated(mesh))
    shardings = abstract.replace(step=replicated(mesh), params=params_sh, opt_state=opt_sh,
                                 guard=jax.tree.map(lambda _: replicated(mesh), abstract.guard))
    state = jax.jit(init, out_shardings=shardings)(rng)
    return state, shardings
