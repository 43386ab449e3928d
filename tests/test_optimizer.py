"""Learning-rate schedules, the weight-decay mask, gradient accumulation and z-loss in the train step."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llm_jax.config import base_config
from llm_jax.config.validate import finalize, validate
from llm_jax.data.packing import pack_documents
from llm_jax.data.tokenizer import make_tokenizer
from llm_jax.models import build_model
from llm_jax.objectives.causal_lm import CausalLM
from llm_jax.parallel.mesh import make_mesh
from llm_jax.parallel.sharding import batch_sharding, replicated, to_global
from llm_jax.train.optimizer import decay_mask, make_optimizer, make_schedule
from llm_jax.train.state import StepOptions, abstract_params, create_train_state
from llm_jax.train.step import train_step

VOCAB = 259
PEAK, FLOOR_RATIO, STEPS, WARMUP = 1e-3, 0.1, 100, 10
FLOOR = PEAK * FLOOR_RATIO


def _opt(**kw):
    opt = base_config().optimizer
    opt.update(dict(lr=PEAK, min_lr_ratio=FLOOR_RATIO, warmup_steps=WARMUP, decay_fraction=0.2))
    opt.update(kw)
    return opt


def _values(schedule, steps):
    return np.array([float(schedule(s)) for s in steps])


def _close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-9)


# ---------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", ["cosine", "constant", "linear", "wsd"])
def test_warmup_is_linear_from_zero_to_peak(name):
    s = make_schedule(_opt(schedule=name), STEPS)
    _close(_values(s, range(WARMUP + 1)), PEAK * np.arange(WARMUP + 1) / WARMUP)
    assert float(s(0)) == 0.0
    _close(float(s(WARMUP)), PEAK)


@pytest.mark.parametrize("name", ["cosine", "constant", "linear", "wsd"])
def test_no_warmup_starts_at_peak(name):
    s = make_schedule(_opt(schedule=name, warmup_steps=0), STEPS)
    _close(float(s(0)), PEAK)
    assert float(s(1)) <= float(s(0))


@pytest.mark.parametrize("name", ["cosine", "constant", "linear", "wsd"])
def test_warmup_longer_than_the_run_just_warms_up(name):
    # A 5-step smoke run with the default warmup: the lr rises linearly for the whole run.
    s = make_schedule(_opt(schedule=name, warmup_steps=50), 5)
    _close(_values(s, range(5)), PEAK * np.arange(5) / 50)


def test_cosine():
    s = make_schedule(_opt(schedule="cosine"), STEPS)
    after = _values(s, range(WARMUP, STEPS + 1))
    assert (np.diff(after) < 0).all(), "cosine decays strictly after warmup"
    _close(float(s(STEPS)), FLOOR)
    _close(float(s((WARMUP + STEPS) // 2)), FLOOR + (PEAK - FLOOR) / 2)  # half way down the cosine
    _close(float(s(2 * STEPS)), FLOOR)  # and stays at the floor


def test_linear():
    s = make_schedule(_opt(schedule="linear"), STEPS)
    t = np.arange(WARMUP, STEPS + 1)
    _close(_values(s, t), PEAK + (FLOOR - PEAK) * (t - WARMUP) / (STEPS - WARMUP))
    _close(float(s(2 * STEPS)), FLOOR)


def test_constant():
    s = make_schedule(_opt(schedule="constant"), STEPS)
    _close(_values(s, [WARMUP, WARMUP + 1, STEPS // 2, STEPS, 10 * STEPS]), PEAK)


def test_wsd_holds_the_peak_then_decays_over_the_last_fraction():
    s = make_schedule(_opt(schedule="wsd", decay_fraction=0.2), STEPS)
    decay_start = STEPS - int(0.2 * STEPS)  # 80
    _close(_values(s, range(WARMUP, decay_start + 1)), PEAK)
    decaying = _values(s, range(decay_start, STEPS + 1))
    assert (np.diff(decaying) < 0).all()
    _close(float(s(decay_start + 10)), (PEAK + FLOOR) / 2)
    _close(float(s(STEPS)), FLOOR)
    _close(float(s(2 * STEPS)), FLOOR)


def test_wsd_decay_fraction_moves_the_decay():
    s = make_schedule(_opt(schedule="wsd", decay_fraction=0.5), STEPS)
    _close(float(s(50)), PEAK)
    assert float(s(51)) < PEAK
    _close(float(s(75)), (PEAK + FLOOR) / 2)


# ---------------------------------------------------------------- weight decay mask


def _model_cfg(**model):
    cfg = base_config()
    cfg.model.update(dict(num_layers=2, d_model=32, num_heads=4, mlp_dim=64, max_seq_len=32))
    cfg.model.update(model)
    return finalize(cfg, VOCAB)


@pytest.fixture(scope="module")
def param_shapes():
    """The parameter tree of a model with every kind of parameter (untied, learned positions, LayerNorm,
    qk-norm), as ShapeDtypeStructs."""
    cfg = _model_cfg(tie_embeddings=False, positions="learned", norm="layernorm", mlp="gelu", qk_norm=True)
    return nn.unbox(abstract_params(build_model(cfg.model), 8))


def _by_path(tree):
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(p, simple=True, separator="/"): v for p, v in leaves}


@pytest.mark.parametrize("decay_embeddings", [False, True])
def test_decay_mask(param_shapes, decay_embeddings):
    mask = _by_path(decay_mask(param_shapes, decay_embeddings))
    assert mask.keys() == _by_path(param_shapes).keys()
    expected_false = {"final_norm/scale", "final_norm/bias", "layers/attn_norm/scale", "layers/attn_norm/bias",
                      "layers/mlp_norm/scale", "layers/mlp_norm/bias", "layers/attn/q_norm/scale",
                      "layers/attn/k_norm/scale", "layers/attn/q_norm/bias", "layers/attn/k_norm/bias"}
    embeddings = {"embedding", "pos_embedding"}
    expected_true = {"unembed", "layers/attn/wq", "layers/attn/wk", "layers/attn/wv", "layers/attn/wo",
                     "layers/mlp/wi", "layers/mlp/wo"}
    assert expected_false | embeddings | expected_true == mask.keys()
    for k in expected_false:
        assert mask[k] is False, k
    for k in expected_true:
        assert mask[k] is True, k
    for k in embeddings:
        assert mask[k] is decay_embeddings, k


def test_optimizer_decays_only_masked_params(param_shapes):
    """With zero gradients AdamW's only update is decay: matrices shrink by lr*wd, norms and embeddings don't."""
    opt = _opt(schedule="constant", warmup_steps=0, weight_decay=0.1)
    tx, _ = make_optimizer(opt, STEPS)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(1 + rng.random(s.shape), s.dtype), param_shapes)

    @jax.jit
    def step(params):
        updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
        return optax.apply_updates(params, updates)

    new = _by_path(step(params))
    mask = _by_path(decay_mask(params, False))
    for k, p in _by_path(params).items():
        factor = 1 - PEAK * 0.1 if mask[k] else 1.0
        np.testing.assert_allclose(new[k], p * factor, rtol=1e-6, err_msg=k)


# ---------------------------------------------------------------- the train step


@pytest.fixture(scope="module")
def setup():
    cfg = base_config()
    cfg.model.update(dict(num_layers=2, d_model=32, num_heads=4, mlp_dim=64, max_seq_len=32))
    cfg.train.update(dict(seq_len=16, global_batch=8, steps=5))
    cfg.optimizer.warmup_steps = 0  # a nonzero learning rate from the first step
    cfg.mesh.data = 1
    cfg = finalize(cfg, VOCAB)
    mesh = make_mesh(validate(cfg, 1), jax.devices()[:1])
    model = build_model(cfg.model)
    tx, schedule = make_optimizer(cfg.optimizer, cfg.train.steps)
    rules = tuple(tuple(r) for r in cfg.sharding.rules)

    # Several documents per row, and padding in rows 1 and 3 only: the two micro-batches (rows r % 2) hold
    # different numbers of target tokens, so averaging per micro-batch would be wrong.
    rng = np.random.default_rng(0)
    docs = [rng.integers(3, VOCAB, size=n) for n in rng.integers(2, 20, size=40)]
    rows = {k: v[:8].copy() for k, v in pack_documents(docs, cfg.train.seq_len + 1).items()}
    assert len(pack_documents(docs, cfg.train.seq_len + 1)["tokens"]) >= 8
    for r, keep in ((1, 6), (3, 11)):
        rows["tokens"][r, keep:] = 0
        rows["segment_ids"][r, keep:] = 0
        rows["positions"][r, keep:] = np.arange(cfg.train.seq_len + 1 - keep)

    batch_sh = batch_sharding(mesh, rules)
    causal = CausalLM(cfg, make_tokenizer("byte"))
    examples = [causal.example({k: rows[k][r] for k in ("tokens", "segment_ids")}, None) for r in range(8)]
    batch = to_global({k: np.stack([e[k] for e in examples]) for k in examples[0]}, batch_sh)
    states, steps_by_options = {}, {}

    def state(**options):  # states are immutable (no donation), so tests can share them
        key = tuple(sorted(options.items()))
        if key not in states:
            states[key], state_sh = create_train_state(model, tx, StepOptions(schedule=schedule, **options),
                                                       cfg.train.seed, cfg.train.seq_len, mesh, rules)
            # As loop.py jits it: fixed in/out shardings, so later steps reuse the first step's compilation.
            steps_by_options[states[key].options] = jax.jit(
                train_step, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, replicated(mesh)))
        return states[key]

    def run(state, steps=1):
        step_fn = steps_by_options.get(state.options, jax.jit(train_step))
        all_metrics = []
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            for _ in range(steps):
                state, metrics = step_fn(state, batch)
                all_metrics.append(jax.device_get(metrics))
        return state, all_metrics

    return dict(cfg=cfg, model=model, rows=rows, batch=batch, state=state, run=run, schedule=schedule)


def _target_mask(segment_ids):
    """Target i (the token at i + 1) counts if it is real and continues the document of token i."""
    B, n = segment_ids.shape
    mask = np.zeros((B, n - 1), bool)
    for r in range(B):
        for i in range(n - 1):
            mask[r, i] = segment_ids[r, i + 1] != 0 and segment_ids[r, i + 1] == segment_ids[r, i]
    return mask


@functools.partial(jax.jit, static_argnums=0)
def _reference_sums(model, params, tokens, seg, pos, mask):
    logits = model.apply({"params": params}, tokens[:, :-1], seg[:, :-1], pos[:, :-1]).astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, -1)
    target = jnp.take_along_axis(logits, tokens[:, 1:, None], -1)[..., 0]
    return jnp.sum((log_z - target) * mask), jnp.sum(log_z**2 * mask)


def _reference_losses(model, params, rows):
    """Token-mean cross-entropy and mean log(Z)^2, computed here independently of step.py."""
    mask = _target_mask(rows["segment_ids"])
    n = int(mask.sum())
    ce, z = _reference_sums(model, params, rows["tokens"], rows["segment_ids"], rows["positions"], mask)
    return ce / n, z / n, n


def test_grad_accum_matches_one_batch(setup):
    s1, s2 = setup["state"](grad_accum=1), setup["state"](grad_accum=2)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params), strict=True):
        np.testing.assert_array_equal(a, b)  # the same seed gives the same initial parameters
    new1, m1 = setup["run"](s1, steps=2)
    new2, m2 = setup["run"](s2, steps=2)

    ce, _, n = _reference_losses(setup["model"], s1.params, setup["rows"])
    assert m1[0]["tokens"] == m2[0]["tokens"] == n
    np.testing.assert_allclose(m1[0]["loss"], ce, rtol=1e-5)
    assert m1[0]["update_norm"] > 0, "the step must change the parameters"
    for a, b in zip(m1, m2, strict=True):
        for k in ("loss", "grad_norm", "update_norm", "param_norm", "lr"):
            np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert int(new1.step) == int(new2.step) == 2
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(new1.params), jax.tree.leaves(new2.params),
                            strict=True):
        np.testing.assert_allclose(b, a, atol=1e-5, err_msg=jax.tree_util.keystr(path))
    moved = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(new1.params),
                                                            jax.tree.leaves(s1.params), strict=True))
    assert moved > 1e-4


def test_lr_metric_follows_the_schedule(setup):
    _, metrics = setup["run"](setup["state"](), steps=3)
    _close([m["lr"] for m in metrics], [float(setup["schedule"](s)) for s in range(3)])


def test_z_loss_changes_the_objective_but_not_the_reported_loss(setup):
    z = 1e-2
    base = setup["state"]()
    with_z = base.replace(options=StepOptions(z_loss=z, grad_accum=1, schedule=setup["schedule"]))
    new0, (m0,) = setup["run"](base)
    new_z, (mz,) = setup["run"](with_z)

    model, rows = setup["model"], setup["rows"]
    ce, log_z_sq, _ = _reference_losses(model, base.params, rows)
    np.testing.assert_allclose(mz["loss"], m0["loss"], rtol=1e-6)
    np.testing.assert_allclose(mz["loss"], ce, rtol=1e-5)
    assert float(m0["z_loss"]) == 0.0
    assert mz["z_loss"] > 0
    np.testing.assert_allclose(mz["z_loss"], z * log_z_sq, rtol=1e-5)

    # The gradient the step applied is that of ce + z * log(Z)^2, not of ce alone.
    def objective(params, weight):
        c, zz, _ = _reference_losses(model, params, rows)
        return c + weight * zz

    grad_fn = jax.jit(jax.grad(objective))
    for weight, metrics in ((0.0, m0), (z, mz)):
        grads = grad_fn(base.params, weight)
        np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(grads), rtol=1e-4)
    assert abs(float(mz["grad_norm"]) - float(m0["grad_norm"])) > 1e-6
    assert any(not np.allclose(a, b, atol=1e-7) for a, b in zip(jax.tree.leaves(new0.params),
                                                                jax.tree.leaves(new_z.params), strict=True))
