"""A stack of identical blocks, scanned or unrolled, and the one place that names its layers.

Every family builds its layer stacks here, so the checkpoint code can name any family's layers portably: a scanned
stack is one module `layers` whose parameters carry a leading layer axis; an unrolled one is `layer_0`,
`layer_1`, ... Both export as `<stack>.layers.<i>.<weight>` (`layers.3.attn.wq`, `encoder.layers.3.mlp.wo`).
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import FrozenConfigDict

Array = jax.Array

SCANNED = "layers"  # the scanned stack's module name; its arrays have a leading layer axis
SCANNED_PATH = re.compile(r"(^|\.)layers\.(?!\d)")  # `<stack>.layers.<weight>`: a scanned stack's array
UNROLLED_PATH = re.compile(r"(^|\.)layer_(\d+)\.")  # `<stack>.layer_<i>.<weight>`: one unrolled layer's array

REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole block in the backward pass
    # Keep the weight matmuls' outputs, recompute the rest (attention, norms, activations).
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def unrolled_name(i: int) -> str:
    return f"layer_{i}"


def run_stack(block: type[nn.Module], cfg: FrozenConfigDict, num_layers: int, x_BLD: Array, shared: tuple,
              per_layer: tuple = ()) -> tuple[Array, object]:
    """Apply `num_layers` blocks to x. Call inside a parent's compact method. Each block is called as
    `block(cfg)(x, *shared, *its slice of per_layer)` and returns (x, its per-layer output or None); returns (x,
    the per-layer outputs stacked on a leading axis, or None). `shared` goes to every layer unchanged (masks,
    positions, a position bias); `per_layer` arrays have a leading layer axis (a KV cache)."""
    if cfg.remat != "none":
        # Under scan, the loop boundary already stops XLA from merging the recomputation away.
        block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
        # One compiled block applied num_layers times: compile time does not grow with depth.
        stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(*(nn.broadcast,) * len(shared), *(0,) * len(per_layer)), length=num_layers,
                        metadata_params={nn.PARTITION_NAME: "layers"})
        return stack(cfg, name=SCANNED)(x_BLD, *shared, *per_layer)
    outs = []
    for i in range(num_layers):
        mine = [jax.tree.map(lambda a, i=i: a[i], p) for p in per_layer]
        x_BLD, out = block(cfg, name=unrolled_name(i))(x_BLD, *shared, *mine)
        outs.append(out)
    stacked = None if outs[0] is None else jax.tree.map(lambda *a: jnp.stack(a), *outs)
    return x_BLD, stacked


def unstack_layers(params: dict, num_layers: int | None = None) -> dict:
    """Scanned params (`layers` with a leading layer axis) -> unrolled ones (`layer_0`, `layer_1`, ...), in every
    stack of the tree. `num_layers`: default, the stacked arrays' leading axis."""
    out = {}
    for name, sub in params.items():
        if name == SCANNED:
            n = num_layers or jax.tree.leaves(sub)[0].shape[0]
            out.update({unrolled_name(i): jax.tree.map(lambda w, i=i: w[i], sub) for i in range(n)})
        elif isinstance(sub, dict) and SCANNED in sub:
            out[name] = unstack_layers(sub, num_layers)
        else:
            out[name] = sub
    return out
