"""Hugging Face import parity: small random models built in `transformers` (no download), imported, give the same
logits in llm_jax to 1e-4 in float32 — on random tokens and on a row packing two documents."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch  # the reference implementation: in the test extra, so a missing one fails loudly
import transformers

from llm_jax.checkpoint.params import _place, from_portable
from llm_jax.config.validate import finalize, validate
from llm_jax.data.tokenizer import make_tokenizer
from llm_jax.hf.importer import read_portable
from llm_jax.models import build_model
from llm_jax.objectives import make_objective
from llm_jax.train.state import abstract_params
from tests.conftest import small_config

VOCAB, L = 96, 24


def _hf_model(kind: str):
    model = _fresh_hf_model(kind)
    # transformers starts biases at 0 and norm scales at 1, where a mis-mapped bias or norm would not show.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0 if ("ln" in name or "norm" in name) else 0.0, 0.1)
    return model


def _fresh_hf_model(kind: str):
    torch.manual_seed(0)
    if kind == "gpt2":
        # Weights 10x GPT-2's scale, so that a wrong activation (erf vs tanh GELU) shows in the logits.
        cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=32,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.2)
        return transformers.GPT2LMHeadModel(cfg)
    if kind == "qwen2":  # Llama's layout with q/k/v biases, grouped-query attention, tied head
        cfg = transformers.Qwen2Config(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                       num_key_value_heads=2, intermediate_size=96, vocab_size=VOCAB,
                                       max_position_embeddings=64, rms_norm_eps=1e-5, initializer_range=0.2,
                                       tie_word_embeddings=True, use_sliding_window=False)
        return transformers.Qwen2ForCausalLM(cfg)
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16} if kind == "llama31" else None
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=96, vocab_size=VOCAB, max_position_embeddings=64,
                                   rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=rope, initializer_range=0.2,
                                   tie_word_embeddings=kind == "llama_tied")
    return transformers.LlamaForCausalLM(cfg)


def _imported(directory, seq_len: int = L):
    """The imported model and its parameters on one device, for examples of its objective at `seq_len`."""
    return _built(*read_portable(directory), str(directory), seq_len)


def _built(keys: dict, portable: dict, where: str, seq_len: int = L):
    """The model of llm_jax model `keys` with the `portable` tensors as its parameters, on one device."""
    cfg = small_config()
    for k, v in keys.items():
        cfg.model[k] = v
    cfg.train.seq_len = seq_len
    cfg = finalize(cfg, keys["vocab_size"])
    validate(cfg, jax.device_count())
    model = build_model(cfg.model)
    abstract = nn.unbox(abstract_params(model, make_objective(cfg, make_tokenizer("byte")).spec()))
    host = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shaped = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=host), abstract)
    return model, _place(from_portable(portable, shaped, where), shaped)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "llama31", "llama_tied", "qwen2"])
def test_imported_logits_equal_transformers(kind, tmp_path):
    hf = _hf_model(kind).eval()
    hf.save_pretrained(tmp_path)
    model, params = _imported(tmp_path)
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=(2, L))
    with torch.no_grad():
        expected = hf(torch.tensor(tokens)).logits.numpy()
    seg, pos = np.ones_like(tokens), np.broadcast_to(np.arange(L), tokens.shape)
    got = np.asarray(model.apply({"params": params}, jnp.asarray(tokens), jnp.asarray(seg), jnp.asarray(pos)))
    diff = float(np.abs(got - expected).max())
    print(f"{kind}: max |logits difference| {diff:.2e}")
    assert diff <= 1e-4, f"{kind}: max |logits difference| {diff}"

    # Packed: two documents in one row, each as if alone (segment ids and restarting positions).
    a, b = tokens[0, :10], tokens[1, :14]
    packed = np.concatenate([a, b])[None]
    seg = np.array([[1] * 10 + [2] * 14])
    pos = np.array([list(range(10)) + list(range(14))])
    got = np.asarray(model.apply({"params": params}, jnp.asarray(packed), jnp.asarray(seg), jnp.asarray(pos)))[0]
    with torch.no_grad():
        alone = [hf(torch.tensor(x[None])).logits.numpy()[0] for x in (a, b)]
    diff = float(np.abs(got - np.concatenate(alone)).max())
    assert diff <= 1e-4, f"{kind} packed: max |logits difference| {diff}"
