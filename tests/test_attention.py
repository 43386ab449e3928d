"""Attention implementations (model.attention): each equals the plain `xla` path forward and backward, with
packed documents, grouped-query heads, odd lengths, a prefix LM, a position bias and the KV-cache decode; chunked
attention needs far less memory; `auto` picks by platform; what a kernel cannot do is a config error."""


import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from llm_jax.config import ConfigError
from llm_jax.config.base import DEFAULT_RULES
from llm_jax.config.validate import finalize, validate
from llm_jax.models.attention import resolve, xla_attention
from llm_jax.models.chunked import chunked_attention
from llm_jax.models.decoder import init_cache
from llm_jax.models.kernels import SplashOptions, cudnn_attention, splash_attention
from llm_jax.models.layout import on_mesh
from llm_jax.models.mask import causal_mask, document_mask, slots_mask
from llm_jax.parallel.mesh import make_mesh
from tests.conftest import small_config
from tests.test_model import init, inputs, make_cfg, random_tokens

B, L, H, K = 2, 37, 4, 8  # an odd length: no block size divides it
SCALE = K**-0.5


def _qkv(G: int, S: int = L, seed: int = 0):
    q, k, v = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(q, (B, L, H, K)), jax.random.normal(k, (B, S, G, K)),
            jax.random.normal(v, (B, S, G, K)))


# Two documents and right padding (segment 0) in row 0; one document filling row 1.
SEGMENTS = jnp.array([[1] * 10 + [2] * 20 + [0] * 7, [3] * L], jnp.int32)
# Prefixes that reach past the query blocks they start in (so blocks above the diagonal hold visible keys).
PREFIX = jnp.zeros((B, L), jnp.int32).at[:, :4].set(1).at[:, 10:28].set(1)


def _chunked(q, k, v, mask, bias=None):
    return chunked_attention(q, k, v, mask, scale=SCALE, bias_BHLS=bias, block_q=8, block_kv=16)


def _splash(q, k, v, mask, bias=None):
    assert bias is None
    return splash_attention(q, k, v, mask, scale=SCALE, options=SplashOptions(128, 128, interpret=True))


def _cudnn_call(q, k, v, mask, bias=None):
    # The exact jax.nn.dot_product_attention call of model.attention=cudnn, run through XLA: checks the layout,
    # the grouped heads, the mask built from segment ids and the causal flag (the cuDNN kernel needs a GPU).
    return cudnn_attention(q, k, v, mask, scale=SCALE, bias_BHLS=bias, implementation="xla")


def _reference(q, k, v, mask, bias=None):
    return xla_attention(q, k, v, mask, scale=SCALE, bias_BHLS=bias, dtype=jnp.float32)


def _assert_same(impl, q, k, v, mask, bias=None):
    """Outputs and the gradients of a random projection of them, w.r.t. q, k, v (and the bias), to 1e-5."""
    weights = jax.random.normal(jax.random.key(7), q.shape)
    argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)

    def loss(fn):
        return lambda q, k, v, bias: jnp.sum(fn(q, k, v, mask, bias) * weights)

    out, ref = jax.jit(impl)(q, k, v, mask, bias), _reference(q, k, v, mask, bias)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    grads = jax.jit(jax.grad(loss(impl), argnums))(q, k, v, bias)
    ref_grads = jax.grad(loss(_reference), argnums)(q, k, v, bias)
    for name, g, r in zip("qkvb"[: len(argnums)], grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-5, err_msg=f"d{name}")


@pytest.mark.parametrize("impl", [_chunked, _splash, _cudnn_call], ids=["chunked", "splash", "cudnn_call"])
@pytest.mark.parametrize("G", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_packed_causal_attention_equals_xla(impl, G):
    _assert_same(impl, *_qkv(G), causal_mask(SEGMENTS))


@pytest.mark.parametrize("impl", [_chunked, _splash, _cudnn_call], ids=["chunked", "splash", "cudnn_call"])
def test_bidirectional_document_attention_equals_xla(impl):
    _assert_same(impl, *_qkv(2), document_mask(SEGMENTS, SEGMENTS))


@pytest.mark.parametrize("impl", [_chunked, _cudnn_call], ids=["chunked", "cudnn_call"])
def test_prefix_lm_and_position_bias_equal_xla(impl):
    _assert_same(impl, *_qkv(2), causal_mask(SEGMENTS, PREFIX))
    bias = jax.random.normal(jax.random.key(3), (1, H, L, L))  # T5's relative bias: one per head, batch 1
    _assert_same(impl, *_qkv(2), document_mask(SEGMENTS, SEGMENTS), bias)


def test_cross_attention_with_a_fully_masked_row_equals_xla():
    # A decoder padding row (segment 0) over an encoder without padding sees no key: both stay finite (uniform).
    enc_segments = jnp.array([[1] * 20 + [2] * 21, [3] * 41], jnp.int32)
    q, k, v = _qkv(2, S=41)
    _assert_same(_chunked, q, k, v, document_mask(SEGMENTS, enc_segments))


def test_cached_decode_slots_equal_xla():
    q, k, v = _qkv(2, S=40)
    mask = slots_mask(jnp.array([[5], [31]]))
    _assert_same(_chunked, q[:, :1], k, v, mask)


def _model_logits(attention: str, mesh_shape=None):
    """Logits of a 2-layer GQA decoder on packed rows, and greedy cached decoding, with model.attention set."""
    block = 128 if attention == "splash" else 8  # splash's blocks are whole TPU lanes
    cfg = make_cfg(num_kv_heads=2, attention=attention, attention_block_q=block, attention_block_kv=block)
    model, params = init(cfg)
    tokens = random_tokens((4, 21))  # 4 rows: the batch splits over data x fsdp
    segments = np.array([[1] * 9 + [2] * 12, [1] * 21, [1] * 3 + [2] * 18, [1] * 20 + [0]])
    args = inputs(tokens, segments)

    def run():
        logits = model.apply({"params": params}, *args)
        cache = init_cache(cfg, 4, 24)
        prompt = inputs(tokens[:, :5])
        step_logits, cache = model.apply({"params": params}, *prompt, cache=cache)
        decoded = []
        for t in range(5, 8):  # three decode steps, one token each
            nxt = jnp.argmax(step_logits[:, -1:], -1).astype(jnp.int32)
            step_logits, cache = model.apply({"params": params}, nxt, jnp.ones_like(nxt),
                                             jnp.full_like(nxt, t), cache=cache)
            decoded.append(step_logits)
        return logits, jnp.concatenate(decoded, 1)

    if mesh_shape is None:
        return jax.jit(run)()
    rules = ml_collections.ConfigDict({"r": DEFAULT_RULES}).r
    with on_mesh(make_mesh(mesh_shape), rules):
        return jax.jit(run)()


@pytest.mark.parametrize("attention", ["chunked", "splash"])
def test_model_with_each_implementation_equals_xla(attention):
    """The whole decoder (training logits and the KV-cache decode) with chunked / splash attention, on one device
    and on a (data=2, fsdp=2, tensor=2) mesh, where splash runs per shard."""
    ref_logits, ref_decoded = _model_logits("xla")
    for mesh_shape in (None, (2, 2, 2)):
        logits, decoded = _model_logits(attention, mesh_shape)
        np.testing.assert_allclose(logits, ref_logits, atol=2e-5, rtol=1e-5, err_msg=f"mesh {mesh_shape}")
        np.testing.assert_allclose(decoded, ref_decoded, atol=2e-5, rtol=1e-5, err_msg=f"mesh {mesh_shape}")


def test_chunked_attention_does_not_hold_the_scores():
    """The compiled forward+backward of chunked attention needs a fraction of the plain path's temporaries at a
    long length (the plain one holds float32 [B, G, R, L, S] scores and probabilities)."""
    n, heads = 2048, 4
    q = jax.ShapeDtypeStruct((1, n, heads, 64), jnp.float32)
    kv = jax.ShapeDtypeStruct((1, n, heads, 64), jnp.float32)
    mask = causal_mask(jnp.ones((1, n), jnp.int32))

    def temp_bytes(fn):
        loss = lambda q, k, v: jnp.sum(fn(q, k, v))
        return jax.jit(jax.grad(loss, (0, 1, 2))).lower(q, kv, kv).compile().memory_analysis().temp_size_in_bytes

    plain = temp_bytes(lambda q, k, v: xla_attention(q, k, v, mask, scale=0.125, bias_BHLS=None, dtype=jnp.float32))
    blocked = temp_bytes(lambda q, k, v: chunked_attention(q, k, v, mask, scale=0.125, block_q=256, block_kv=256))
    scores = heads * n * n * 4
    print(f"temporaries: xla {plain:,} bytes, chunked {blocked:,} bytes; scores {scores:,} bytes")
    assert plain >= scores, (plain, scores)
    assert blocked < scores / 3 and blocked < plain / 8, \
        f"chunked attention holds {blocked:,} bytes of temporaries; the scores are {scores:,}, xla holds {plain:,}"

    # In a scanned layer stack (scan_layers) the mask is a loop constant; what depends only on it must not be
    # hoisted out of the loop for every block pair at once.
    def stack(q, k, v):
        layer = lambda x, w: (chunked_attention(x * w, k, v, mask, scale=0.125, block_q=256, block_kv=256), None)
        return jax.lax.scan(layer, q, jnp.ones(2))[0]

    scanned = temp_bytes(stack)
    assert scanned < scores / 2, f"chunked attention in a layer scan holds {scanned:,} bytes (scores {scores:,})"


def test_auto_picks_by_platform_and_length():
    m = make_cfg()
    assert resolve(m, "tpu", 128) == "splash"
    assert resolve(m, "gpu", 128) == "xla"  # float32 compute: cuDNN's kernel would not run
    assert resolve(make_cfg(dtype="bfloat16"), "gpu", 128) == "cudnn"
    assert resolve(m, "cpu", 128) == "xla"
    assert resolve(m, "cpu", m.attention_chunked_from) == "chunked"
    assert resolve(make_cfg(attention="xla"), "tpu", 8192) == "xla"


@pytest.mark.parametrize("overrides, message", [
    ({"model.attention": "cudnn"}, "model.attention=cudnn computes in bfloat16"),
    ({"model.attention": "splash", "objective.name": "prefix_lm"}, "no prefix-LM mask"),
])
def test_what_a_kernel_cannot_do_is_a_config_error(overrides, message):
    cfg = small_config()
    for key, value in overrides.items():
        section, name = key.split(".")
        cfg[section][name] = value
    with pytest.raises(ConfigError, match=message):
        validate(finalize(cfg, 259), 1)
