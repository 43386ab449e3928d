"""The transformer: causality, packed-document isolation, scan/remat equivalence, GQA, parameter metadata."""

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from llm_jax.config import base_config
from llm_jax.config.base import DEFAULT_RULES
from llm_jax.config.validate import finalize
from llm_jax.models import build_model, unstack_layers

VOCAB = 259  # the byte tokenizer; finalize pads the model's vocab to 320
L = 16


def make_cfg(**model):
    """A finalized config.model: 2 layers, width 32, 4 heads, unless overridden."""
    cfg = base_config()
    cfg.model.update(dict(num_layers=2, d_model=32, num_heads=4, mlp_dim=64, max_seq_len=32))
    cfg.model.update(model)
    return finalize(cfg, VOCAB).model


def inputs(tokens, segment_ids=None, positions=None):
    tokens = jnp.asarray(tokens, jnp.int32)
    B, n = tokens.shape
    seg = jnp.ones_like(tokens) if segment_ids is None else jnp.asarray(segment_ids, jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (B, n)) if positions is None else positions
    return tokens, seg, jnp.asarray(pos, jnp.int32)


def boxed_params(cfg):
    """The model's parameters as abstract nn.Partitioned leaves (eval_shape: nothing is computed)."""
    model = build_model(cfg)
    return jax.eval_shape(lambda rng: model.init(rng, *inputs(np.zeros((1, 8), np.int32)))["params"],
                          jax.random.key(0))


def shapes(cfg):
    return jax.tree.map(lambda x: x.shape, nn.unbox(boxed_params(cfg)))


@functools.lru_cache
def _real_init(cfg):
    model = build_model(cfg)
    init = jax.jit(lambda rng: nn.unbox(model.init(rng, *inputs(np.zeros((1, 8), np.int32)))["params"]))
    return init(jax.random.key(0))


def init(cfg, real=False, seed=0):
    """(model, params). Compiling model.init is slow on a small CPU, so most tests fill the real parameter tree
    (shapes and dtypes from model.init via eval_shape) with random numbers instead; real=True runs model.init.
    Norm scales and biases are random too, so that no parameter is a trivial identity."""
    model = build_model(cfg)
    if real:
        return model, _real_init(ml_collections.FrozenConfigDict(cfg))
    rng = np.random.default_rng(seed)

    def fill(path, x):
        name = path[-1].key
        if name == "scale":
            value = 1 + 0.1 * rng.standard_normal(x.shape)
        elif name == "bias":
            value = 0.1 * rng.standard_normal(x.shape)
        else:
            value = cfg.init_std * rng.standard_normal(x.shape)
        return jnp.asarray(value, x.dtype)

    return model, jax.tree_util.tree_map_with_path(fill, nn.unbox(boxed_params(cfg)))


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, params, tokens, seg, pos):
    return model.apply({"params": params}, tokens, seg, pos)


def apply(model, params, tokens, segment_ids=None, positions=None):
    """Logits as numpy; one compilation per (model config, input shape), shared by every test."""
    return np.asarray(_apply(model, params, *inputs(tokens, segment_ids, positions)))


def random_tokens(shape, seed=0):
    return np.random.default_rng(seed).integers(3, VOCAB, size=shape).astype(np.int32)


# Every value of each option appears, and every pair of options' values appears once (an orthogonal array).
VARIANTS = [
    dict(positions="rope", norm="rmsnorm", mlp="swiglu"),
    dict(positions="rope", norm="layernorm", mlp="gelu"),
    dict(positions="learned", norm="rmsnorm", mlp="gelu"),
    dict(positions="learned", norm="layernorm", mlp="swiglu"),
]


def _id(v):
    return "-".join(v.values())


# ---------------------------------------------------------------- causality and document isolation


@pytest.mark.parametrize("variant", VARIANTS, ids=_id)
def test_causal(variant):
    cfg = make_cfg(init_std=0.2, **variant)
    model, params = init(cfg)
    base = random_tokens((1, L))
    # Row 0 is the original; row 1 + t has the token at position t changed.
    batch = np.repeat(base, L + 1, axis=0)
    for t in range(L):
        batch[1 + t, t] = 3 + (base[0, t] - 3 + 100) % (VOCAB - 3)
    assert (batch[1:] != base).sum() == L
    logits = apply(model, params, batch)
    assert logits.shape == (L + 1, L, cfg.vocab_size)
    assert np.isfinite(logits).all()
    for t in range(L):
        diff = np.abs(logits[1 + t] - logits[0]).max(-1)  # per position
        np.testing.assert_allclose(diff[:t], 0, atol=1e-6, err_msg=f"changing token {t} changed earlier logits")
        assert diff[t] > 1e-3, f"changing token {t} did not change its own logits"
        if t < L - 1:
            assert diff[t + 1:].min() > 1e-5, f"changing token {t} did not reach every later position"


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_packed_documents_do_not_attend_across(positions):
    model, params = init(make_cfg(init_std=0.2, positions=positions))
    a, b = 5, L - 5
    doc1, doc2, other1 = random_tokens((a,), seed=1), random_tokens((b,), seed=2), random_tokens((a,), seed=3)
    assert (doc1 != other1).any()
    packed_seg, packed_pos = [1] * a + [2] * b, [*range(a), *range(b)]
    # Every row has length L (one compilation); a document "alone" is followed by padding (segment 0), which a
    # causal model cannot see.
    rows = [
        (np.concatenate([doc1, doc2]), packed_seg, packed_pos),            # 0: two packed documents
        (np.concatenate([doc2, doc1]), [1] * b + [0] * a, [*range(b), *range(a)]),  # 1: document 2 alone
        (np.concatenate([doc1, doc2]), [1] * a + [0] * b, packed_pos),     # 2: document 1 alone
        (np.concatenate([other1, doc2]), packed_seg, packed_pos),          # 3: another document 1, same document 2
        (np.concatenate([doc1, doc2]), [1] * L, list(range(L))),           # 4: the same tokens as one document
    ]
    tokens, seg, pos = (np.stack(x) for x in zip(*rows, strict=True))
    out = apply(model, params, tokens, seg, pos)
    packed = out[0]
    np.testing.assert_allclose(packed[a:], out[1, :b], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(packed[:a], out[2, :a], atol=1e-5, rtol=1e-5)
    # Different tokens in document 1 leave document 2 alone (but do change document 1).
    np.testing.assert_allclose(out[3, a:], packed[a:], atol=1e-6)
    assert np.abs(out[3, :a] - packed[:a]).max() > 1e-3
    # Without the segment boundary, document 2's positions do see document 1.
    assert np.abs(out[4, a:] - packed[a:]).max() > 1e-3


# ---------------------------------------------------------------- scan, unroll, remat


def test_unstack_layers_matches_the_unrolled_tree():
    _, params_s = init(make_cfg(scan_layers=True))
    converted = unstack_layers(params_s, 2)
    assert "layers" not in converted and {"layer_0", "layer_1"} <= set(converted)
    assert jax.tree.map(jnp.shape, converted) == shapes(make_cfg(scan_layers=False))
    # Layer i of the stack really is slice i.
    np.testing.assert_array_equal(converted["layer_1"]["attn"]["wq"], params_s["layers"]["attn"]["wq"][1])
    assert not np.array_equal(converted["layer_0"]["attn"]["wq"], converted["layer_1"]["attn"]["wq"])


@pytest.mark.parametrize("variant, real", [
    (dict(), True),
    (dict(positions="learned", norm="layernorm", mlp="gelu", qk_norm=True), False),
], ids=["llama-init", "gpt2-qknorm-random"])
def test_scan_equals_unrolled(variant, real):
    cfg_s = make_cfg(init_std=0.2, scan_layers=True, **variant)
    model_s, params_s = init(cfg_s, real=real)
    model_u = build_model(make_cfg(init_std=0.2, scan_layers=False, **variant))
    tokens = random_tokens((2, L), seed=3)
    scanned = apply(model_s, params_s, tokens)
    unrolled = apply(model_u, unstack_layers(params_s, cfg_s.num_layers), tokens)
    assert np.isfinite(scanned).all()
    np.testing.assert_allclose(unrolled, scanned, atol=1e-5, rtol=1e-5)


def _grads(cfg, params, tokens):
    model = build_model(cfg)
    seg, pos = inputs(tokens)[1:]

    def loss(p):
        logits = model.apply({"params": p}, jnp.asarray(tokens[:, :-1]), seg[:, :-1], pos[:, :-1])
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        return -jnp.take_along_axis(logp, jnp.asarray(tokens[:, 1:])[..., None], -1).mean()

    return jax.jit(jax.value_and_grad(loss))(params)


def test_remat_does_not_change_gradients():
    ref_cfg = make_cfg(init_std=0.2, remat="none", scan_layers=True)
    _, params = init(ref_cfg, real=True)
    tokens = random_tokens((2, L + 1), seed=4)
    ref_loss, ref_grads = _grads(ref_cfg, params, tokens)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(ref_grads))
    for remat, scan in itertools.product(("none", "full", "dots"), (True, False)):
        if (remat, scan) == ("none", True):
            continue
        p = params if scan else unstack_layers(params, 2)
        expected = ref_grads if scan else unstack_layers(ref_grads, 2)
        loss, grads = _grads(make_cfg(init_std=0.2, remat=remat, scan_layers=scan), p, tokens)
        np.testing.assert_allclose(loss, ref_loss, atol=1e-5, err_msg=f"remat={remat} scan={scan}")
        assert jax.tree.structure(grads) == jax.tree.structure(expected)
        for path, g in jax.tree_util.tree_leaves_with_path(grads):
            want = expected
            for k in path:
                want = want[k.key]
            np.testing.assert_allclose(g, want, atol=1e-5,
                                       err_msg=f"remat={remat} scan={scan} {jax.tree_util.keystr(path)}")


# ---------------------------------------------------------------- attention variants and parameters


def test_grouped_query_attention_shapes():
    attn = shapes(make_cfg(num_heads=4, num_kv_heads=2))["layers"]["attn"]
    assert attn["wq"] == (2, 32, 4, 8)
    assert attn["wk"] == attn["wv"] == (2, 32, 2, 8)
    assert attn["wo"] == (2, 4, 8, 32)
    default = make_cfg(num_heads=4)  # num_kv_heads 0 -> num_heads
    assert default.num_kv_heads == 4
    for cfg in (make_cfg(num_heads=4, num_kv_heads=4), default):
        attn = shapes(cfg)["layers"]["attn"]
        assert attn["wk"] == attn["wv"] == attn["wq"] == (2, 32, 4, 8)


def test_grouped_query_attention_equals_mha_with_shared_kv():
    """Query head h uses kv head h // (H/G): MHA with each kv head repeated gives the same logits."""
    gqa, params = init(make_cfg(init_std=0.2, num_heads=4, num_kv_heads=2))
    mha = build_model(make_cfg(init_std=0.2, num_heads=4, num_kv_heads=4))
    mha_params = jax.tree.map(lambda x: x, params)
    for name in ("wk", "wv"):
        mha_params["layers"]["attn"][name] = jnp.repeat(params["layers"]["attn"][name], 2, axis=2)
    tokens = random_tokens((2, L), seed=5)
    gqa_logits = apply(gqa, params, tokens)
    assert gqa_logits.shape == (2, L, 320) and np.isfinite(gqa_logits).all()
    np.testing.assert_allclose(apply(mha, mha_params, tokens), gqa_logits, atol=1e-5, rtol=1e-5)
    # Pairing query heads with the wrong kv heads gives different logits, so the comparison above is sharp.
    for name in ("wk", "wv"):
        mha_params["layers"]["attn"][name] = jnp.tile(params["layers"]["attn"][name], (1, 1, 2, 1))
    assert np.abs(apply(mha, mha_params, tokens) - gqa_logits).max() > 1e-3


def test_tied_and_untied_embeddings():
    tied = shapes(make_cfg(tie_embeddings=True))
    assert "unembed" not in tied
    model, untied = init(make_cfg(tie_embeddings=False))
    assert untied["unembed"].shape == (32, 320)
    assert untied["embedding"].shape == tied["embedding"] == (320, 32)
    # The output projection really is the separate matrix: zeroing it zeroes the logits.
    zeroed = dict(untied, unembed=jnp.zeros_like(untied["unembed"]))
    np.testing.assert_array_equal(apply(model, zeroed, random_tokens((2, L))), 0)


def test_learned_positions_have_a_table_and_rope_does_not():
    assert shapes(make_cfg(positions="learned"))["pos_embedding"] == (32, 32)  # (max_seq_len, d_model)
    assert "pos_embedding" not in shapes(make_cfg(positions="rope"))


def test_qk_norm_adds_norm_params():
    plain = shapes(make_cfg(qk_norm=False))["layers"]["attn"]
    normed = shapes(make_cfg(qk_norm=True))["layers"]["attn"]
    assert "q_norm" not in plain and "k_norm" not in plain
    assert normed["q_norm"] == normed["k_norm"] == {"scale": (2, 8)}  # (layers, head_dim)


def test_layernorm_has_bias_and_rmsnorm_does_not():
    assert set(shapes(make_cfg(norm="layernorm"))["final_norm"]) == {"scale", "bias"}
    assert set(shapes(make_cfg(norm="rmsnorm"))["final_norm"]) == {"scale"}


def test_bfloat16_compute_with_float32_params():
    cfg = make_cfg(dtype="bfloat16", param_dtype="float32")
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nn.unbox(boxed_params(cfg))))  # what init makes
    model, params = init(cfg)
    logits = _apply(model, params, *inputs(random_tokens((2, L))))
    assert logits.dtype == jnp.bfloat16
    assert np.isfinite(np.asarray(logits.astype(jnp.float32))).all()


def test_bfloat16_params():
    boxed = boxed_params(make_cfg(dtype="bfloat16", param_dtype="bfloat16"))
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(nn.unbox(boxed)))


@pytest.mark.parametrize("scan", [True, False])
def test_every_param_is_partitioned_with_logical_names(scan):
    cfg = make_cfg(scan_layers=scan, tie_embeddings=False, positions="learned", norm="layernorm", mlp="gelu",
                   qk_norm=True)
    boxed = boxed_params(cfg)  # model.init's boxed output, traced with eval_shape
    leaves = jax.tree_util.tree_leaves_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    known = {name for name, _ in DEFAULT_RULES}
    assert len(leaves) > 10
    for path, leaf in leaves:
        where = jax.tree_util.keystr(path)
        assert isinstance(leaf, nn.Partitioned), f"{where} has no logical axis names"
        assert len(leaf.names) == leaf.value.ndim, where
        assert all(n is None or n in known for n in leaf.names), (where, leaf.names)
        in_stack = scan and path[0].key == "layers"
        assert (leaf.names[0] == "layers") == in_stack, (where, leaf.names)
    layer = boxed["layers"] if scan else boxed["layer_0"]
    prefix = ("layers",) if scan else ()
    assert boxed["embedding"].names == ("vocab", "embed")
    assert boxed["unembed"].names == ("embed", "vocab")
    assert boxed["pos_embedding"].names == (None, "embed")
    assert layer["attn"]["wq"].names == (*prefix, "embed", "heads", "kv")
    assert layer["attn"]["wk"].names == (*prefix, "embed", "kv_heads", "kv")
    assert layer["attn"]["wo"].names == (*prefix, "heads", "kv", "embed")
    assert layer["attn"]["q_norm"]["scale"].names == (*prefix, "kv")
    assert layer["mlp"]["wi"].names == (*prefix, "embed", "mlp")
    assert layer["mlp"]["wo"].names == (*prefix, "mlp", "embed")
