"""train.loss_chunk: the loss over chunks of positions equals the whole-logits loss, gradients included, on one
device and on a mesh whose tensor axis shards the vocabulary, for every family's head; and the compiled train step
needs less temporary memory with it, which is why it exists."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llm_jax.config import base_config
from llm_jax.config.base import DEFAULT_RULES
from llm_jax.config.load import ConfigError
from llm_jax.config.validate import check_keys, finalize
from llm_jax.models import build_model
from llm_jax.models.decoder import init_cache
from llm_jax.models.head import chunk_logits
from llm_jax.models.layout import on_mesh
from llm_jax.objectives.example import ExampleSpec, token_fields
from llm_jax.parallel.mesh import make_mesh
from llm_jax.parallel.sharding import batch_sharding, replicated, to_global
from llm_jax.train import step
from llm_jax.train.state import StepOptions, TrainState, abstract_params, param_shardings

B, L, VOCAB = 4, 12, 300  # finalize pads the vocabulary to 320 (a multiple of 64, so tensor=2 divides it)
RULES = tuple(tuple(r) for r in DEFAULT_RULES)


def model_cfg(family="decoder", **model):
    cfg = base_config()
    cfg.model.update(dict(family=family, num_layers=1, d_model=32, num_heads=4, mlp_dim=64, max_seq_len=32))
    cfg.model.update(model)
    return finalize(cfg, VOCAB).model


def random_params(model, example, seed=0):
    """Every leaf random (norm scales and biases too), so no part of the head is a trivial identity."""
    rng = np.random.default_rng(seed)
    params = nn.unbox(abstract_params(model, example))
    return jax.tree.map(lambda x: jnp.asarray(0.2 * rng.standard_normal(x.shape), x.dtype), params)


def decoder_batch(seed=0, length=L):
    """Two packed documents per row; weights 0 on padding, on every document's last target and at random."""
    rng = np.random.default_rng(seed)
    seg = np.ones((B, length), np.int32)
    seg[:, length // 2:] = 2
    seg[1, -3:] = 0
    pos = np.concatenate([np.arange(length // 2), np.arange(length - length // 2)])[None].repeat(B, 0)
    weights = (rng.random((B, length)) > 0.25) & (seg != 0)
    weights[:, length // 2 - 1] = False
    return {"inputs": rng.integers(3, VOCAB, (B, length)).astype(np.int32),
            "targets": rng.integers(0, VOCAB, (B, length)).astype(np.int32),
            "segment_ids": seg, "positions": pos.astype(np.int32), "weights": weights.astype(np.float32)}


def encoder_decoder_batch(seed=0):
    d = decoder_batch(seed)
    e = decoder_batch(seed + 1, length=L + 4)
    return {"encoder_inputs": e["inputs"], "encoder_segment_ids": e["segment_ids"],
            "encoder_positions": e["positions"], "decoder_inputs": d["inputs"], **{
                k: d[k] for k in ("segment_ids", "positions", "targets", "weights")}}


def _state(model, params, chunk, z_loss):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=(), guard={}, model=model,
                      tx=optax.identity(), options=StepOptions(z_loss=z_loss, loss_chunk=chunk))


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _loss_and_grads(model, params, batch, chunk, z_loss):
    """The train step's own micro-batch loss (step._micro_loss), its (ce, z) sums and its gradients."""
    total = jnp.maximum(batch["weights"].sum(), 1).astype(jnp.float32)
    grad_fn = jax.value_and_grad(step._micro_loss, has_aux=True)
    (loss, sums), grads = grad_fn(params, _state(model, params, chunk, z_loss), batch, total)
    return loss, sums, grads


def assert_same(got, want, what):
    (loss1, (ce1, z1), g1), (loss0, (ce0, z0), g0) = got, want
    np.testing.assert_allclose(ce1, ce0, rtol=1e-5, err_msg=f"{what}: cross-entropy sum")
    np.testing.assert_allclose(z1, z0, rtol=1e-5, err_msg=f"{what}: z-loss sum")
    np.testing.assert_allclose(loss1, loss0, rtol=1e-5, err_msg=f"{what}: loss")
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g1), jax.tree.leaves(g0), strict=True):
        scale = float(np.abs(b).max())
        assert scale > 0, f"{what}: the gradient of {jax.tree_util.keystr(path)} is zero, the test proves nothing"
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale,
                                   err_msg=f"{what}: gradient of {jax.tree_util.keystr(path)}")


def test_decoder_chunks_equal_whole_logits():
    """The tied head on one device, in chunks of 5 positions: the last of the three is padded. (The untied head and
    chunks that divide the length: on the mesh, below.)"""
    model = build_model(model_cfg(tie_embeddings=True))
    params, batch = random_params(model, L), decoder_batch()
    assert 0 < batch["weights"].sum() < batch["weights"].size
    want = _loss_and_grads(model, params, batch, 0, 1e-2)
    assert_same(_loss_and_grads(model, params, batch, 5, 1e-2), want, "tied, chunks of 5")


@functools.partial(jax.jit, static_argnums=0)
def _logits_and_head(model, params, batch):
    inputs = model.inputs(batch)
    head = model.apply({"params": params}, **inputs, head_only=True)
    logits_BLV = model.apply({"params": params}, **inputs)
    return logits_BLV, head.logits(), chunk_logits(head.x_BLD[:, :5], head.w_DV, head.b_V)


@pytest.mark.parametrize("family,tie", [("encoder", True), ("encoder_decoder", True), ("encoder_decoder", False)])
def test_every_family_hands_over_the_head_its_logits_come_from(family, tie):
    """BERT's MLM transform and output bias, T5's rescaled tied head and its untied one: the head a family returns
    makes exactly its logits, so the chunked loss (checked on the decoder) holds for it too."""
    model = build_model(model_cfg(family, tie_embeddings=tie))
    batch = encoder_decoder_batch() if family == "encoder_decoder" else decoder_batch()
    logits_BLV, from_head_BLV, chunk_BTV = _logits_and_head(model, random_params(model, _spec(family)), batch)
    np.testing.assert_array_equal(from_head_BLV, logits_BLV)
    np.testing.assert_allclose(chunk_BTV, logits_BLV[:, :5], rtol=1e-5, atol=1e-5)


def _spec(family):
    if family != "encoder_decoder":
        return L
    return ExampleSpec(tuple((k, v.shape[1], v.dtype.name) for k, v in encoder_decoder_batch().items()))


def test_eval_sums_in_chunks_equal_whole_logits():
    model = build_model(model_cfg())
    params, batch = random_params(model, L), decoder_batch()
    # A tied head makes a token's own id likely: half the targets are the inputs, so some are predicted right.
    batch["targets"][:, ::2] = batch["inputs"][:, ::2]
    token_bytes_V = jnp.asarray(np.random.default_rng(1).integers(1, 4, model.cfg.vocab_size), jnp.int32)
    evaluate = jax.jit(step.eval_step, static_argnums=(0, 4))
    whole, chunked = evaluate(model, params, batch, token_bytes_V, 0), evaluate(model, params, batch, token_bytes_V, 5)
    for k in ("loss_sum", "tokens", "bytes", "correct"):
        np.testing.assert_allclose(chunked[k], whole[k], rtol=1e-5, err_msg=k)
    assert whole["correct"] > 0 and whole["bytes"] > whole["tokens"]  # so the comparison means something


def test_chunks_on_a_mesh_that_shards_the_vocabulary():
    """data=2, fsdp=2, tensor=2: the vocabulary of the untied head (and of each chunk's logits) is split over
    tensor, the width over fsdp, the batch over data and fsdp."""
    model = build_model(model_cfg(tie_embeddings=False))
    mesh = make_mesh((2, 2, 2), jax.devices()[:8])
    params_sh = param_shardings(model, L, mesh, RULES)  # as create_train_state places them
    assert tuple(params_sh["unembed"].spec) == ("fsdp", "tensor"), params_sh["unembed"]
    params = jax.device_put(random_params(model, L), params_sh)
    batch = to_global(decoder_batch(), batch_sharding(mesh, RULES))
    with on_mesh(mesh, RULES):
        want = _loss_and_grads(model, params, batch, 0, 1e-2)
        got = _loss_and_grads(model, params, batch, 4, 1e-2)
    assert_same(got, want, "untied, mesh (2, 2, 2), chunks of 4")


MEM_B, MEM_L, MEM_V = 16, 128, 8192  # the float32 logits: 64 MiB, well above everything else in the step


def _temp_bytes(chunk: int) -> int:
    """Temporary memory of the compiled train step (AdamW, as training runs it) for a vocabulary-heavy shape."""
    cfg = base_config()
    cfg.model.update(dict(num_layers=1, d_model=64, num_heads=4, mlp_dim=128, max_seq_len=MEM_L))
    model = build_model(finalize(cfg, MEM_V).model)
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    tx = optax.adamw(1e-3)
    zeros = ExampleSpec(token_fields(MEM_L)).zeros

    def init(rng):
        params = nn.unbox(model.init(rng, **model.inputs(zeros(1)))["params"])
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), guard={},
                          model=model, tx=tx, options=StepOptions(loss_chunk=chunk))

    abstract = jax.eval_shape(init, jax.random.key(0))
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in zeros(MEM_B).items()}
    with on_mesh(mesh, RULES):
        compiled = jax.jit(step.train_step, out_shardings=(None, replicated(mesh))).lower(abstract, batch).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_chunks_shrink_the_compiled_steps_temporary_memory():
    whole, chunked = _temp_bytes(0), _temp_bytes(16)
    logits_bytes = MEM_B * MEM_L * MEM_V * 4
    print(f"train step temp memory: whole logits {whole / 2**20:.1f} MiB, chunks of 16 positions "
          f"{chunked / 2**20:.1f} MiB (the float32 logits alone: {logits_bytes / 2**20:.0f} MiB)")
    assert whole > logits_bytes, "the whole-logits step should hold at least the float32 logits"
    # Less than the logits alone (attention and the optimizer take most of it): the backward pass does not keep
    # every chunk's softmax, as it would, stacked by the scan, if the chunks were not rematerialised.
    assert chunked < logits_bytes, (whole, chunked)


def test_the_key_is_declared_and_checked():
    cfg = base_config()
    assert cfg.train.loss_chunk == 0  # the whole-logits path unless asked
    cfg.train.loss_chunk = -1
    with pytest.raises(ConfigError, match=r"train.loss_chunk=-1 is out of range"):
        check_keys(cfg)


def test_a_head_with_a_kv_cache_is_an_error():
    c = model_cfg()
    model = build_model(c)
    params = random_params(model, L)
    tokens = jnp.zeros((1, 2), jnp.int32)
    with pytest.raises(ValueError, match="head_only=True is for training"):
        model.apply({"params": params}, tokens, tokens, tokens, cache=init_cache(c, 1, 4), head_only=True)
