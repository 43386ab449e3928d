"""The encoder family (BERT): bidirectional attention inside packed documents, scan/unroll and pre/post-norm
layouts, a NumPy reference forward, the FLOP count and the bert-base parameter count."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from llm_jax.config.base import DEFAULT_RULES
from llm_jax.config.validate import finalize
from llm_jax.models import FAMILIES, build_model, flops_per_token, unstack_layers
from llm_jax.models.encoder import Encoder
from llm_jax.parallel.sharding import check_rules_cover
from tests.conftest import small_config

VOCAB = 259  # the byte tokenizer; finalize pads the model's vocab to 320
L = 12


def encoder_cfg(**model):
    """A finalized BERT-style config.model (post-norm, learned positions, exact GELU, biases), small_config's sizes
    (2 layers, width 64, 4 heads, MLP 128) unless overridden."""
    cfg = small_config()
    cfg.model.update(dict(family="encoder", norm="layernorm", positions="learned", mlp="gelu_exact",
                          type_vocab_size=2, norm_position="post", use_bias=True))
    cfg.model.update(model)
    return finalize(cfg, VOCAB).model


def abstract_params(cfg) -> dict:
    """The parameter tree as abstract nn.Partitioned leaves (eval_shape: nothing is allocated or computed)."""
    tokens = jnp.zeros((1, 8), jnp.int32)
    return jax.eval_shape(lambda rng: build_model(cfg).init(rng, tokens, tokens, tokens)["params"],
                          jax.random.key(0))


def random_params(cfg, seed: int = 0) -> dict:
    """The real tree filled with random numbers (faster than compiling init). Norm scales and every bias are
    random too, so a reference that drops one of them disagrees."""
    rng = np.random.default_rng(seed)

    def fill(path, x):
        value = (1.0 if path[-1].key == "scale" else 0.0) + 0.1 * rng.standard_normal(x.shape)
        return jnp.asarray(value, x.dtype)

    return jax.tree_util.tree_map_with_path(fill, nn.unbox(abstract_params(cfg)))


def flat_names(tree: dict) -> set[str]:
    return {"/".join(p.key for p in path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)}


def packed_row() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One row [1, L]: documents of 5 and 4 tokens, then 3 padding tokens; positions restart per document."""
    seg = np.array([[1] * 5 + [2] * 4 + [0] * 3], np.int32)
    pos = np.array([[*range(5), *range(4), 0, 0, 0]], np.int32)
    tokens = np.random.default_rng(1).integers(3, VOCAB, (1, L)).astype(np.int32)
    types = np.array([[0, 0, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0]], np.int32)
    return tokens, seg, pos, types


# ---------------------------------------------------------------- attention pattern


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_attention_is_bidirectional_within_a_document_and_never_across(norm_position):
    # Positions 0..L-1 over the whole row make pos_embedding[j] an additive input at token j alone, so the
    # gradient with respect to that table row is the gradient with respect to token j's input embedding.
    cfg = encoder_cfg(norm_position=norm_position)
    model, params = build_model(cfg), random_params(cfg)
    tokens, seg, _, _ = packed_row()
    pos = np.arange(L, dtype=np.int32)[None]
    probe_V = jnp.asarray(np.random.default_rng(2).standard_normal(cfg.vocab_size), jnp.float32)

    def per_position(pos_table):
        p = {**params, "pos_embedding": pos_table}
        return model.apply({"params": p}, tokens, seg, pos)[0] @ probe_V  # [L]

    jac_LPD = jax.jit(jax.jacrev(per_position))(params["pos_embedding"])
    influence_LJ = np.abs(np.asarray(jac_LPD)[:, :L]).max(-1)  # output i <- input j
    for i in range(L):
        for j in range(L):
            if seg[0, i] == seg[0, j]:
                assert influence_LJ[i, j] > 1e-6, f"output {i} does not see input {j} of its own document"
            else:
                assert influence_LJ[i, j] == 0, f"output {i} sees input {j} across a document boundary"
    # Bidirectional: the first token of each document sees the later ones.
    assert influence_LJ[0, 4] > 1e-6 and influence_LJ[5, 8] > 1e-6


# ---------------------------------------------------------------- layouts, scan, remat


def test_scan_equals_unrolled():
    cfg_s = encoder_cfg(scan_layers=True)
    params_s = random_params(cfg_s, seed=3)
    assert params_s["layers"]["attn"]["wq"].shape[0] == cfg_s.num_layers
    tokens, seg, pos, types = packed_row()
    scanned = build_model(cfg_s).apply({"params": params_s}, tokens, seg, pos, types)
    unrolled = build_model(encoder_cfg(scan_layers=False)).apply(
        {"params": unstack_layers(params_s, cfg_s.num_layers)}, tokens, seg, pos, types)
    assert np.isfinite(scanned).all()
    np.testing.assert_allclose(unrolled, scanned, atol=1e-5, rtol=1e-5)


def test_pre_and_post_norm_layouts():
    tokens, seg, pos, types = packed_row()
    names, logits = {}, {}
    for where in ("pre", "post"):
        cfg = encoder_cfg(norm_position=where, scan_layers=True)
        params = random_params(cfg)
        names[where] = flat_names(params)
        logits[where] = build_model(cfg).apply({"params": params}, tokens, seg, pos, types)
        assert logits[where].shape == (1, L, cfg.vocab_size)
        assert np.isfinite(logits[where]).all()
    post_only, pre_only = {"embed_norm/scale", "embed_norm/bias"}, {"final_norm/scale", "final_norm/bias"}
    assert post_only <= names["post"] and not pre_only & names["post"]
    assert pre_only <= names["pre"] and not post_only & names["pre"]
    assert names["pre"] - pre_only == names["post"] - post_only
    assert np.abs(logits["pre"] - logits["post"]).max() > 1e-3


def test_mlm_head_norm_is_a_layernorm_whatever_model_norm_says():
    # BERT's head always has a LayerNorm (scale and bias), even in an rmsnorm model whose other norms have no bias.
    names = flat_names(nn.unbox(abstract_params(encoder_cfg(norm="rmsnorm", norm_position="pre"))))
    assert {"mlm_head/norm/scale", "mlm_head/norm/bias", "final_norm/scale"} <= names
    assert "final_norm/bias" not in names and "layer_0/attn_norm/bias" not in names


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_gives_the_same_gradients(remat):
    tokens, seg, pos, types = packed_row()
    cfg = encoder_cfg(scan_layers=True)
    params = random_params(cfg)

    def grads(c):
        model = build_model(c)

        def loss(p):
            logits = model.apply({"params": p}, tokens, seg, pos, types)
            return -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1).mean()

        return jax.jit(jax.grad(loss))(params)

    ref, got = grads(cfg), grads(encoder_cfg(scan_layers=True, remat=remat))
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(b, a, atol=1e-6, rtol=1e-5)
    assert max(float(np.abs(g).max()) for g in jax.tree.leaves(ref)) > 0


# ---------------------------------------------------------------- the outside check: a NumPy forward


def layernorm(x, p, eps):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def numpy_bert(p: dict, cfg, tokens, seg, pos, types) -> np.ndarray:
    """BERT's forward (as in HF BertForMaskedLM) for one row, in float64, from an unrolled post-norm tree."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    eps, K = cfg.norm_eps, cfg.head_dim
    x = p["embedding"][tokens] + p["pos_embedding"][pos] + p["type_embedding"][types]
    x = layernorm(x, p["embed_norm"], eps)
    visible = seg[:, None] == seg[None, :]
    for i in range(cfg.num_layers):
        lp = p[f"layer_{i}"]
        a = lp["attn"]
        q = np.einsum("ld,dhk->lhk", x, a["wq"]) + a["bq"]
        k = np.einsum("ld,dhk->lhk", x, a["wk"]) + a["bk"]
        v = np.einsum("ld,dhk->lhk", x, a["wv"]) + a["bv"]
        scores = np.einsum("lhk,shk->hls", q, k) / np.sqrt(K)
        scores = np.where(visible[None], scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = np.einsum("hls,shk->lhk", probs, v)
        x = layernorm(x + np.einsum("lhk,hkd->ld", attn, a["wo"]) + a["bo"], lp["attn_norm"], eps)
        m = lp["mlp"]
        h = x @ m["wi"] + m["bi"]
        h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
        x = layernorm(x + h @ m["wo"] + m["bo"], lp["mlp_norm"], eps)
    hd = p["mlm_head"]
    h = x @ hd["wi"] + hd["bi"]
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    h = layernorm(h, hd["norm"], eps)
    out_DV = p["embedding"].T if cfg.tie_embeddings else hd["unembed"]
    return h @ out_DV + hd["bias"]


@pytest.mark.parametrize("tied", [True, False])
def test_matches_a_numpy_reference_forward(tied):
    cfg = encoder_cfg(scan_layers=False, tie_embeddings=tied, dtype="float32", param_dtype="float32")
    params = random_params(cfg, seed=5)
    assert ("unembed" in params["mlm_head"]) != tied
    tokens, seg, pos, types = packed_row()
    got = np.asarray(build_model(cfg).apply({"params": params}, tokens, seg, pos, types))[0]
    want = numpy_bert(params, cfg, tokens[0], seg[0], pos[0], types[0])
    real = seg[0] != 0  # padding rows are never read; the reference's -inf mask leaves them undefined anyway
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=1e-4)
    # Token types matter: all-zero types (also what leaving them out means) give other logits.
    zero = np.asarray(build_model(cfg).apply({"params": params}, tokens, seg, pos))[0]
    np.testing.assert_allclose(zero[real], numpy_bert(params, cfg, tokens[0], seg[0], pos[0], 0 * types[0])[real],
                               atol=1e-4, rtol=1e-4)
    assert np.abs(zero - got)[real].max() > 1e-3


# ---------------------------------------------------------------- bert-base: FLOPs and parameters


def bert_base():
    return encoder_cfg(num_layers=12, d_model=768, num_heads=12, mlp_dim=3072, vocab_size=30528,
                       max_seq_len=512)


def test_flops_per_token_of_bert_base():
    # Per layer: q, k, v, o = 4 x 768 x 768 = 2,359,296; MLP in and out = 2 x 768 x 3072 = 4,718,592.
    # 12 layers: 12 x 7,077,888 = 84,934,656. Head: 768 x 768 = 589,824; output 768 x 30528 = 23,445,504.
    matmul_params = 84_934_656 + 589_824 + 23_445_504  # 108,969,984
    # Attention scores and weighted values: 2 matmuls x 2 FLOPs x 3 (fwd + bwd) x 12 layers x 768 x 512 keys.
    attention = 12 * 12 * 768 * 512  # 56,623,104
    assert flops_per_token(bert_base(), 512) == 6 * matmul_params + attention == 710_443_008


def test_bert_base_parameter_count():
    cfg = bert_base()
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(abstract_params(cfg))))
    assert abs(count - 110e6) / 110e6 < 0.01, count
    # HF BertForMaskedLM (bert-base-uncased, vocab 30522): 109,514,298 parameters. Ours has 6 more vocab rows
    # (30528, a multiple of 64): 6 x 768 embedding weights + 6 output biases.
    assert count == 109_514_298 + 6 * 768 + 6


# ---------------------------------------------------------------- registry, inputs, sharding metadata


def test_registry_inputs_and_logical_axes():
    family = FAMILIES["encoder"]
    assert family.module is Encoder and family.objectives[0] == "masked_lm"
    example = {"inputs": 1, "segment_ids": 2, "positions": 3, "targets": 4, "weights": 5}
    assert Encoder.inputs(example) == {"tokens_BL": 1, "segment_ids_BL": 2, "positions_BL": 3}
    assert Encoder.inputs({**example, "token_types": 6})["token_types_BL"] == 6
    for scan in (True, False):
        check_rules_cover(abstract_params(encoder_cfg(scan_layers=scan, tie_embeddings=False)), DEFAULT_RULES)
