"""Numbers checked against references written here, not against recorded outputs of the code itself.

- the initial loss of an untrained model is ln(vocab size): its logits are near zero, so its guess is uniform;
- the transformer's forward pass against a NumPy transformer (float64) written from the architecture's definition;
- the optimizer's steps (schedule, clipping, AdamW, decay mask) against a NumPy AdamW fed the same gradients.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax.objectives.loss import cross_entropy
from llm_jax.parallel.sharding import to_global
from llm_jax.train.setup import build_run, prepare
from llm_jax.train.step import forward
from tests.conftest import small_config


def _one_device_config():
    cfg = small_config()
    cfg.mesh.data = 1
    return cfg


def test_the_initial_loss_is_ln_vocab_size():
    cfg = _one_device_config()
    cfg.model.init_std = 0.02
    run = build_run(cfg, jax.devices()[:1])
    try:
        batch = to_global(run.data.train.batch_at(0), run.batch_sharding)
        _, metrics = run.jit_train(run.state, batch)
    finally:
        run.data.train.close()
    uniform = math.log(run.cfg.model.vocab_size)
    assert float(metrics["loss"]) == pytest.approx(uniform, rel=0.01)
    # Half the variance of the logits above uniform: with init_std 0.02 the logits are ~0.02 * sqrt(d_model).
    assert float(metrics["loss"]) > uniform


# ---------------------------------------------------------------- forward pass


def np_rms_norm(x, scale, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def np_rope(x_LHK, positions_L, theta):
    """Rotate each pair (x[i], x[i + K/2]) by angle position * theta^(-i / (K/2))."""
    half = x_LHK.shape[-1] // 2
    out = np.empty_like(x_LHK)
    for i in range(half):
        angle_L1 = (positions_L * theta ** (-i / half))[:, None]
        a, b = x_LHK[..., i], x_LHK[..., i + half]
        out[..., i] = a * np.cos(angle_L1) - b * np.sin(angle_L1)
        out[..., i + half] = b * np.cos(angle_L1) + a * np.sin(angle_L1)
    return out


def np_attention(x_LD, p, segment_ids_L, positions_L, cfg):
    H, G, K = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    q_LHK = np_rope(np.einsum("ld,dhk->lhk", x_LD, p["wq"]), positions_L, cfg.rope_theta)
    k_LGK = np_rope(np.einsum("ld,dgk->lgk", x_LD, p["wk"]), positions_L, cfg.rope_theta)
    v_LGK = np.einsum("ld,dgk->lgk", x_LD, p["wv"])
    L = x_LD.shape[0]
    out_LHK = np.zeros((L, H, K))
    for h in range(H):
        g = h // (H // G)  # query heads share a kv head in consecutive groups
        for t in range(L):
            seen = [s for s in range(t + 1) if segment_ids_L[s] == segment_ids_L[t]]
            scores = np.array([q_LHK[t, h] @ k_LGK[s, g] for s in seen]) / math.sqrt(K)
            w = np.exp(scores - scores.max())
            out_LHK[t, h] = (w / w.sum()) @ v_LGK[seen, g]
    return np.einsum("lhk,hkd->ld", out_LHK, p["wo"])


def np_swiglu(x_LD, p):
    gate_LF = x_LD @ p["wi_gate"]
    return (gate_LF / (1 + np.exp(-gate_LF)) * (x_LD @ p["wi_up"])) @ p["wo"]


def np_transformer(params, tokens_L, segment_ids_L, positions_L, cfg):
    """Pre-norm RMSNorm blocks with RoPE attention and a SwiGLU MLP; the embedding is also the output layer."""
    x_LD = params["embedding"][tokens_L]
    for i in range(cfg.num_layers):
        layer = (jax.tree.map(lambda w, i=i: w[i], params["layers"]) if "layers" in params  # scanned
                 else params[f"layer_{i}"])
        h_LD = np_rms_norm(x_LD, layer["attn_norm"]["scale"], cfg.norm_eps)
        x_LD = x_LD + np_attention(h_LD, layer["attn"], segment_ids_L, positions_L, cfg)
        x_LD = x_LD + np_swiglu(np_rms_norm(x_LD, layer["mlp_norm"]["scale"], cfg.norm_eps), layer["mlp"])
    return np_rms_norm(x_LD, params["final_norm"]["scale"], cfg.norm_eps) @ params["embedding"].T


def test_a_forward_pass_matches_a_numpy_transformer():
    cfg = _one_device_config()
    cfg.model.num_kv_heads = 2  # grouped-query: 2 query heads per kv head
    prepared = prepare(cfg, jax.devices()[:1], check_data=False)
    m = prepared.cfg.model
    assert (m.norm, m.positions, m.mlp, m.tie_embeddings, m.dtype) == ("rmsnorm", "rope", "swiglu", True, "float32")
    # Two rows of packed documents; positions restart with each document.
    segment_ids_BL = np.array([[1] * 12 + [2] * 20, [1] * 25 + [2] * 7])
    positions_BL = np.array([np.concatenate([np.arange(n) for n in np.unique(r, return_counts=True)[1]])
                             for r in segment_ids_BL])
    tokens_BL = np.random.default_rng(0).integers(0, m.vocab_size, segment_ids_BL.shape)
    params = nn.unbox(prepared.model.init(jax.random.key(0), tokens_BL, segment_ids_BL, positions_BL)["params"])
    # Weights far larger than init_std's, norm scales away from 1: every part of every layer moves the logits.
    rng = np.random.default_rng(1)
    params = jax.tree_util.tree_map_with_path(
        lambda path, w: (1 + 0.3 * rng.standard_normal(w.shape) if path[-1].key == "scale"
                         else 0.3 * rng.standard_normal(w.shape)).astype(np.float32), params)

    logits_BLV = np.asarray(prepared.model.apply({"params": params}, tokens_BL, segment_ids_BL, positions_BL))
    params64 = jax.tree.map(lambda w: np.asarray(w, np.float64), params)
    for b in range(2):
        ref_LV = np_transformer(params64, tokens_BL[b], segment_ids_BL[b], positions_BL[b], m)
        err = np.abs(logits_BLV[b] - ref_LV).max() / np.abs(ref_LV).max()
        assert err < 1e-5, f"row {b}: logits differ from the NumPy transformer by {err:.2e} of their scale"


def test_initial_parameters_have_the_configured_scales():
    cfg = _one_device_config()
    cfg.model.d_model, cfg.model.mlp_dim = 256, 512  # enough entries per matrix for a 5% check of the std
    prepared = prepare(cfg, jax.devices()[:1], check_data=False)
    m = prepared.cfg.model
    tokens = np.zeros((1, 8), np.int32)
    params = nn.unbox(prepared.model.init(jax.random.key(0), tokens, tokens + 1, np.arange(8)[None])["params"])
    residual_std = m.init_std / math.sqrt(2 * m.num_layers)  # GPT-2: outputs into the residual stream
    expected = {"embedding": m.init_std, "wq": m.init_std, "wk": m.init_std, "wv": m.init_std,
                "wi_gate": m.init_std, "wi_up": m.init_std}
    for path, w in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [k.key for k in path]
        w = np.asarray(w)
        if keys[-1] == "scale":
            assert np.all(w == 1), keys
        elif keys[-1] == "wo":
            assert w.std() == pytest.approx(residual_std, rel=0.05), keys
        else:
            assert w.std() == pytest.approx(expected[keys[-1]], rel=0.05) and abs(w.mean()) < m.init_std / 20, keys


# ---------------------------------------------------------------- optimizer


def np_lr(step, peak, warmup, total, min_ratio):
    """Linear warmup from 0, then cosine decay to min_ratio * peak at `total` steps."""
    if step < warmup:
        return peak * step / warmup
    progress = (step - warmup) / (total - warmup)
    floor = peak * min_ratio
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def np_adamw(params, grads_seq, opt, total, decayed, clip=True):
    """AdamW (decoupled weight decay, bias-corrected moments) after global-norm clipping; returns the params
    after each step."""
    m = {k: np.zeros_like(p) for k, p in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    out = []
    for t, grads in enumerate(grads_seq, start=1):
        norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
        factor = min(1.0, opt.clip_norm / norm) if clip else 1.0
        lr = np_lr(t - 1, opt.lr, opt.warmup_steps, total, opt.min_lr_ratio)
        new = {}
        for k, p in params.items():
            g = grads[k] * factor
            m[k] = opt.b1 * m[k] + (1 - opt.b1) * g
            v[k] = opt.b2 * v[k] + (1 - opt.b2) * g * g
            m_hat, v_hat = m[k] / (1 - opt.b1**t), v[k] / (1 - opt.b2**t)
            new[k] = p - lr * (m_hat / (np.sqrt(v_hat) + opt.eps) + (opt.weight_decay * p if decayed(k) else 0))
        params = new
        out.append(params)
    return out


def _flat(tree) -> dict[str, np.ndarray]:
    return {"/".join(str(k.key) for k in path): np.asarray(w, np.float64)
            for path, w in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_optimizer_steps_match_a_numpy_adamw():
    cfg = _one_device_config()
    steps = 4
    cfg.train.steps = 10
    o = cfg.optimizer
    o.schedule, o.warmup_steps, o.lr, o.min_lr_ratio, o.weight_decay = "cosine", 2, 2e-3, 0.1, 0.1
    # Adam undoes any rescaling of the gradient except through eps: an eps near the size of the gradient's
    # entries makes clipping show in the update.
    o.clip_norm, o.eps = 0.25, 1e-3
    run = build_run(cfg, jax.devices()[:1])
    model, state = run.state.model, run.state

    @jax.jit
    def grads_of(params, batch):
        def loss(params):
            ce_sum, _ = cross_entropy(forward(model, params, batch), batch["targets"], batch["weights"], 0.0)
            return ce_sum / jnp.maximum(batch["weights"].sum(), 1)
        return jax.grad(loss)(params)

    start = _flat(state.params)
    grads_seq, after, norms = [], [], []
    try:
        for i in range(steps):
            batch = to_global(run.data.train.batch_at(i), run.batch_sharding)
            grads_seq.append(_flat(grads_of(state.params, batch)))
            state, metrics = run.jit_train(state, batch)
            after.append(_flat(state.params))
            norms.append(float(metrics["grad_norm"]))
    finally:
        run.data.train.close()

    for grads, norm in zip(grads_seq, norms, strict=True):
        assert norm == pytest.approx(math.sqrt(sum(np.sum(g * g) for g in grads.values())), rel=1e-5)
        assert norm > 2 * o.clip_norm  # every step is clipped
    decayed = lambda k: k.rsplit("/", 1)[-1] not in ("scale", "embedding")  # norms and the embedding: no decay
    expected = np_adamw(start, grads_seq, o, cfg.train.steps, decayed)
    for step, (got, want) in enumerate(zip(after, expected, strict=True), start=1):
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5 * np.abs(want[k]).max(),
                                       err_msg=f"{k} after step {step}")
    # The check would catch a wrong mask or missing clipping: each moves the parameters past the tolerance.
    for wrong in (np_adamw(start, grads_seq, o, cfg.train.steps, lambda k: "scale" not in k),
                  np_adamw(start, grads_seq, o, cfg.train.steps, decayed, clip=False)):
        assert any(np.abs(wrong[-1][k] - expected[-1][k]).max() > 1e-4 * np.abs(expected[-1][k]).max()
                   for k in expected[-1])
