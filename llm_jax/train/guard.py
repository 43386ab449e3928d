"""Bad-update guard: NaN/Inf and loss-spike detection inside the jitted train step.

With `train.nan_policy=skip` a step whose loss or gradients are not finite keeps the old parameters and
optimizer state (the data still moves on); with `train.spike_k > 0` so does a step whose loss is above
mean + k * std of the last `train.spike_window` accepted losses. The guard's state lives in the TrainState, so
it is checkpointed and a resumed run makes the same decisions. Everything here is on device: deciding costs no
host round trip.
"""

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class GuardOptions:
    skip_nonfinite: bool = False  # nan_policy == "skip"
    spike_k: float = 0.0  # 0: no spike detection
    window: int = 1

    @property
    def active(self) -> bool:
        return self.skip_nonfinite or self.spike_k > 0


def init_guard(window: int) -> dict[str, jax.Array]:
    """`losses`: a ring buffer of accepted losses; `filled`: how many were ever written; `skipped`: skipped updates
    so far; `streak`: skipped updates in a row (the loop ends the run when it grows too long)."""
    zero = jnp.zeros((), jnp.int32)
    return {"losses": jnp.zeros((window,), jnp.float32), "filled": zero, "skipped": zero, "streak": zero}


def decide(guard: dict, loss: jax.Array, grad_norm: jax.Array, options: GuardOptions) -> tuple[jax.Array, dict]:
    """(skip this update?, the guard after this step)."""
    nonfinite = ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm))
    skip = nonfinite & options.skip_nonfinite
    if options.spike_k > 0:
        mean, std = jnp.mean(guard["losses"]), jnp.std(guard["losses"])
        full = guard["filled"] >= options.window  # judge spikes only against a whole window
        skip = skip | (full & ~nonfinite & (loss > mean + options.spike_k * std))
    slot = guard["filled"] % options.window
    accepted = ~skip & ~nonfinite
    losses = jnp.where(accepted, guard["losses"].at[slot].set(loss.astype(jnp.float32)), guard["losses"])
    new = {"losses": losses, "filled": guard["filled"] + accepted.astype(jnp.int32),
           "skipped": guard["skipped"] + skip.astype(jnp.int32),
           "streak": jnp.where(skip, guard["streak"] + 1, 0).astype(jnp.int32)}
    return skip, new


def keep_if(skip: jax.Array, old, new):
    """`old` where the update is skipped, else `new` (a select: values are exactly one or the other)."""
    return jax.tree.map(lambda o, n: jnp.where(skip, o, n), old, new)
