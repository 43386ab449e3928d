"""The T5 v1.1 encoder-decoder: relative position buckets, masking of packed rows, cached generation, layer
stacking, FLOP and parameter counts."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from llm_jax.config.validate import finalize
from llm_jax.data.tokenizer import BOS_ID, EOS_ID
from llm_jax.models import build_model, flops_per_token, unstack_layers
from llm_jax.models.relative import relative_position_bucket
from llm_jax.train.sample_seq2seq import generate_seq2seq
from tests.conftest import small_config

# Worked by hand from T5's formula for relative positions -20..20 (key - query). 32 buckets, max distance 128,
# bidirectional: 16 buckets a direction, keys after the query offset by 16; distances under 8 are exact, a
# distance n >= 8 gets 8 + floor(log(n / 8) / log(128 / 8) * 8) = 8 + floor(2 log2(n / 8)): 8..11 -> 8,
# 12..15 -> 9 (2 log2(1.5) = 1.17), 16..22 -> 10 (2 log2(2) = 2 exactly at 16).
BIDIRECTIONAL_32_128 = [10, 10, 10, 10, 10,  # -20..-16
                        9, 9, 9, 9,  # -15..-12
                        8, 8, 8, 8,  # -11..-8
                        7, 6, 5, 4, 3, 2, 1,  # -7..-1
                        0,  # 0
                        17, 18, 19, 20, 21, 22, 23,  # 1..7
                        24, 24, 24, 24,  # 8..11
                        25, 25, 25, 25,  # 12..15
                        26, 26, 26, 26, 26]  # 16..20
# 8 buckets, max distance 20, causal: only keys before the query count (later ones -> 0); under 4 exact, then
# 4 + floor(log(n / 4) / log(5) * 4): 4, 5 -> 4; 6 (1.008), 7, 8 -> 5; 9 (2.015) .. 13 (2.93) -> 6; 14 (3.11)
# and on -> 7, the last bucket.
CAUSAL_8_20 = [7, 7, 7, 7, 7, 7, 7,  # -20..-14
               6, 6, 6, 6, 6,  # -13..-9
               5, 5, 5,  # -8..-6
               4, 4,  # -5, -4
               3, 2, 1,  # -3..-1
               *[0] * 21]  # 0..20: keys after the query


def make_model(scan: bool = True, num_decoder_layers: int = 0, tie: bool = False, **model_keys):
    cfg = small_config()
    m = cfg.model
    m.family, m.positions, m.mlp, m.norm = "encoder_decoder", "relative", "geglu", "rmsnorm"
    m.tie_embeddings, m.scan_layers, m.num_decoder_layers = tie, scan, num_decoder_layers
    for k, v in model_keys.items():
        m[k] = v
    cfg = finalize(cfg, 259)
    if cfg.model.num_decoder_layers == 0:
        cfg.model.num_decoder_layers = cfg.model.num_layers
    return build_model(cfg.model)


@functools.cache  # tests share a model's parameters (never modified) to save compiles
def init_params(model, seed: int = 0, scale: float = 1.0) -> dict:
    B, L, T = 1, 4, 3
    ones = lambda n: jnp.ones((B, n), jnp.int32)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(seed), ones(L), ones(L), ones(L), ones(T), ones(T),
                                          ones(T))["params"])
    # Matrices scaled up so that logits differ strongly from token to token (greedy outputs then vary).
    return jax.tree.map(lambda w: w * scale if w.ndim >= 2 else w, params)


def packed_row() -> dict:
    """Two rows; row 0 packs document 1 (encoder 9 tokens, decoder 6) and document 2 (5, 3), then padding."""
    rng = np.random.default_rng(0)
    enc_seg = np.array([1] * 9 + [2] * 5 + [0] * 2)
    dec_seg = np.array([1] * 6 + [2] * 3 + [0])
    positions = lambda seg: np.concatenate([np.arange((seg == s).sum()) for s in (1, 2, 0)])
    return {"encoder_inputs": rng.integers(3, 259, (2, 16)).astype(np.int32),
            "encoder_segment_ids": np.stack([enc_seg] * 2).astype(np.int32),
            "encoder_positions": np.stack([positions(enc_seg)] * 2).astype(np.int32),
            "decoder_inputs": rng.integers(3, 259, (2, 10)).astype(np.int32),
            "segment_ids": np.stack([dec_seg] * 2).astype(np.int32),
            "positions": np.stack([positions(dec_seg)] * 2).astype(np.int32)}


@functools.cache
def jitted_apply(model):
    return jax.jit(model.apply)


def logits_of(model, params, example: dict) -> np.ndarray:
    return np.asarray(jitted_apply(model)({"params": params}, **model.inputs(example)))


def test_relative_position_bucket_matches_hand_computed_tables():
    rel = jnp.arange(-20, 21)
    np.testing.assert_array_equal(relative_position_bucket(rel, True, 32, 128), BIDIRECTIONAL_32_128)
    np.testing.assert_array_equal(relative_position_bucket(rel, False, 8, 20), CAUSAL_8_20)
    # Far beyond max_distance every distance shares the last bucket of its direction.
    far = jnp.array([-1000, 1000])
    np.testing.assert_array_equal(relative_position_bucket(far, True, 32, 128), [15, 31])
    np.testing.assert_array_equal(relative_position_bucket(far, False, 32, 128), [31, 0])


def test_decoder_is_causal_and_documents_stay_apart():
    model = make_model()
    params = init_params(model, scale=3.0)
    ex = packed_row()
    base = logits_of(model, params, ex)

    changed = {**ex, "decoder_inputs": ex["decoder_inputs"].copy()}
    changed["decoder_inputs"][:, 3] += 1
    out = logits_of(model, params, changed)
    np.testing.assert_allclose(out[:, :3], base[:, :3], atol=1e-6, err_msg="decoder token 3 reached earlier logits")
    assert np.abs(out[:, 3:6] - base[:, 3:6]).max() > 1e-3, "a decoder token changed nothing after it"
    np.testing.assert_allclose(out[:, 6:9], base[:, 6:9], atol=1e-6,
                               err_msg="decoder self-attention crossed from document 1 into document 2")

    for doc, other in ((2, slice(0, 6)), (1, slice(6, 9))):
        changed = {**ex, "encoder_inputs": ex["encoder_inputs"].copy()}
        changed["encoder_inputs"][ex["encoder_segment_ids"] == doc] += 1
        out = logits_of(model, params, changed)
        np.testing.assert_allclose(out[:, other], base[:, other], atol=1e-6,
                                   err_msg=f"encoder tokens of document {doc} reached the other document")
        mine = slice(0, 6) if doc == 1 else slice(6, 9)
        assert np.abs(out[:, mine] - base[:, mine]).max() > 1e-3, "cross-attention did not read its document"


def test_packed_document_equals_the_document_alone():
    """Document 2 packed after document 1 gives the logits it gives alone in a row: the masks keep document 1 out
    and the relative bias sees the same distances."""
    model = make_model()
    params = init_params(model, scale=3.0)
    ex = packed_row()
    alone = {"encoder_inputs": ex["encoder_inputs"][:, 9:14], "encoder_segment_ids": np.ones((2, 5), np.int32),
             "encoder_positions": np.broadcast_to(np.arange(5, dtype=np.int32), (2, 5)),
             "decoder_inputs": ex["decoder_inputs"][:, 6:9], "segment_ids": np.ones((2, 3), np.int32),
             "positions": np.broadcast_to(np.arange(3, dtype=np.int32), (2, 3))}
    np.testing.assert_allclose(logits_of(model, params, ex)[:, 6:9], logits_of(model, params, alone),
                               atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("scan", [True, False])
def test_cached_greedy_decoding_equals_full_recomputation(scan):
    model = make_model(scan=scan, num_decoder_layers=3)  # 2 encoder layers, 3 decoder layers
    params = init_params(model, seed=1, scale=4.0)
    prompts = [[5, 6, 7], [BOS_ID, *range(20, 31), EOS_ID], [9]]
    max_new = 12
    outs = generate_seq2seq(model, params, prompts, max_new, temperature=0.0)
    assert len({int(t) for o in outs for t in o}) > 4, f"greedy outputs barely vary ({outs}): scale up the weights"
    # The full model, as in training, on the prompts padded to another length than generation used and on
    # <bos> + the generated tokens (padding: segment 0).
    L, T = 16, max_new + 1
    ex = {k: np.zeros((len(prompts), n), np.int32) for k, n in (("encoder_inputs", L), ("encoder_segment_ids", L),
                                                               ("decoder_inputs", T), ("segment_ids", T))}
    for i, (prompt, new) in enumerate(zip(prompts, outs, strict=True)):
        ex["encoder_inputs"][i, : len(prompt)], ex["encoder_segment_ids"][i, : len(prompt)] = prompt, 1
        ex["decoder_inputs"][i, : len(new) + 1], ex["segment_ids"][i, : len(new) + 1] = [BOS_ID, *new], 1
    ex["encoder_positions"] = np.broadcast_to(np.arange(L, dtype=np.int32), (len(prompts), L))
    ex["positions"] = np.broadcast_to(np.arange(T, dtype=np.int32), (len(prompts), T))
    greedy = logits_of(model, params, ex).argmax(-1)
    for prompt, new, row in zip(prompts, outs, greedy, strict=True):
        np.testing.assert_array_equal(new, row[: len(new)], err_msg=f"cached decoding of {prompt} diverged")
        if len(new) < max_new:
            assert row[len(new)] == EOS_ID, f"decoding of {prompt} stopped without <eos>"


def test_scan_equals_unrolled_and_encoder_reaches_decoder():
    scanned, unrolled = make_model(scan=True, num_decoder_layers=3), make_model(scan=False, num_decoder_layers=3)
    params = init_params(scanned, seed=1, scale=4.0)
    unstacked = unstack_layers(params)
    expected = jax.tree.map(jnp.shape, init_params(unrolled))
    assert jax.tree.map(jnp.shape, unstacked) == expected, "unstacked scanned params differ from unrolled ones"
    ex = packed_row()
    base = logits_of(scanned, params, ex)
    np.testing.assert_allclose(logits_of(unrolled, unstacked, ex), base, atol=2e-5, rtol=1e-5)

    changed = {**ex, "encoder_inputs": ex["encoder_inputs"].copy()}
    changed["encoder_inputs"][:, 2] += 1  # document 1's encoder only
    assert np.abs(logits_of(scanned, params, changed)[:, :6] - base[:, :6]).max() > 1e-3, \
        "an encoder token did not reach the decoder logits"


def test_tied_head_is_the_scaled_embedding():
    untied, tied = make_model(), make_model(tie=True)
    params = init_params(untied, scale=3.0)
    tied_params = {k: v for k, v in params.items() if k != "unembed"}
    assert jax.tree.map(jnp.shape, tied_params) == jax.tree.map(jnp.shape, init_params(tied))
    D = params["embedding"].shape[1]
    as_untied = {**params, "unembed": params["embedding"].T * D**-0.5}
    ex = packed_row()
    np.testing.assert_allclose(logits_of(tied, tied_params, ex), logits_of(untied, as_untied, ex),
                               atol=1e-5, rtol=1e-5)


T5_BASE = {"num_layers": 12, "num_decoder_layers": 12, "d_model": 768, "num_heads": 12, "head_dim": 64,
           "mlp_dim": 2048, "vocab_size": 32128}


def test_t5_base_flops_and_parameter_count():
    model = make_model(**T5_BASE)
    # Hand count for 512 encoder and 114 decoder tokens. Matmul weights: an encoder block 4 * 768^2 (q, k, v, o)
    # + 3 * 768 * 2048 (gated MLP) = 7,077,888, x 12 = 84,934,656; a decoder block 8 * 768^2 (self + cross) +
    # 3 * 768 * 2048 = 9,437,184, x 12 = 113,246,208, + the head 768 * 32128 = 24,674,304 -> 137,920,512.
    # 6 x (84,934,656 * 512 + 137,920,512 * 114) = 355,256,893,440.
    # Attention, 12 FLOPs per (layer, head, head dim, key) per query: encoder 12 * 12 * 12 * 64 * 512 keys * 512
    # queries = 28,991,029,248; decoder 12 * 12 * 12 * 64 * (114 + 512) keys * 114 queries = 7,892,287,488.
    # Total 392,140,210,176 / 512 encoder tokens = 765,898,848.
    assert flops_per_token(model.cfg, 512, 114) == 765_898_848

    ones = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), *[ones] * 6)
    names = flatten_dict(nn.unbox(abstract)["params"], sep=".")
    count = sum(math.prod(x.shape) for x in names.values())
    hf_t5_v1_1_base = 247_577_856  # google/t5-v1_1-base: shared embedding, untied lm_head, 2 bias tables
    assert abs(count - hf_t5_v1_1_base) / hf_t5_v1_1_base < 0.02, f"{count:,} parameters"
