"""The optimizer from config: AdamW with a learning-rate schedule, global-norm clipping and a decay mask."""

import jax
import ml_collections
import optax

# Norm scales and biases, and the projections' biases (models/layers.py: bq, bk, bv, bo, bi, bi_gate, bi_up).
NEVER_DECAYED = ("scale", "bias", "bq", "bk", "bv", "bo", "bi", "bi_gate", "bi_up")
EMBEDDINGS = ("embedding", "pos_embedding", "type_embedding")


def make_schedule(opt: ml_collections.ConfigDict, steps: int) -> optax.Schedule:
    peak, warmup = opt.lr, opt.warmup_steps
    floor = peak * opt.min_lr_ratio
    if opt.schedule == "constant":
        return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)],
                                    [warmup]) if warmup else optax.constant_schedule(peak)
    if opt.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(steps, warmup + 1), end_value=floor)
    if opt.schedule == "linear":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup), optax.linear_schedule(peak, floor, max(1, steps - warmup))],
            [warmup])
    if opt.schedule == "wsd":  # warmup, hold the peak, then decay linearly over the last decay_fraction
        decay = max(1, min(int(steps * opt.decay_fraction), steps - warmup))  # ends inside the run
        stable = max(0, steps - warmup - decay)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak),
             optax.linear_schedule(peak, floor, decay)], [warmup, warmup + stable])
    raise ValueError(f"unknown optimizer.schedule '{opt.schedule}'")


def decay_mask(params, decay_embeddings: bool):
    """True for parameters that get weight decay: matrices, and embeddings only if asked."""
    def decayed(path, _):
        name = str(getattr(path[-1], "key", path[-1]))
        if name in NEVER_DECAYED:
            return False
        return decay_embeddings or name not in EMBEDDINGS
    return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(opt: ml_collections.ConfigDict, steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = make_schedule(opt, steps)
    parts = [optax.clip_by_global_norm(opt.clip_norm)] if opt.clip_norm > 0 else []
    parts.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay,
                             mask=lambda p: decay_mask(p, opt.decay_embeddings)))
    return optax.chain(*parts), schedule
