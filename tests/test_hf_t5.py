"""Hugging Face T5 import parity: small random T5ForConditionalGeneration models saved with save_pretrained (no
download), imported into the encoder_decoder family, give transformers' logits to 1e-4 in float32 — on random
inputs and targets, and on rows packing two documents in both the encoder and the decoder."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch  # the reference implementation: in the test extra, so a missing one fails loudly
import transformers

from llm_jax.hf.importer import import_hf, read_portable
from tests.test_hf_parity import _imported

VOCAB, D, L, T = 96, 64, 40, 16  # encoder length 40 reaches the logarithmic buckets (distance >= 8 both ways)
TOLERANCE = 1e-4


def _hf_model(kind: str) -> transformers.T5ForConditionalGeneration:
    """"untied": T5 v1.1 as published (a head of its own, unscaled); "shared": v1.1's config whose head is the
    shared embedding (what transformers 5 builds for tie_word_embeddings=False); "tied": T5 v1.0 (scaled);
    "silu": "untied" with SiLU-gated MLPs; "relu": the original T5 (ReLU MLPs, scaled tied head)."""
    torch.manual_seed(0)
    mlp = {"silu": "gated-silu", "relu": "relu"}.get(kind, "gated-gelu")
    cfg = transformers.T5Config(d_model=D, d_ff=96, d_kv=16, num_heads=4, num_layers=2, num_decoder_layers=2,
                                vocab_size=VOCAB, feed_forward_proj=mlp,
                                tie_word_embeddings=kind in ("tied", "relu"),
                                relative_attention_num_buckets=32, relative_attention_max_distance=128,
                                dropout_rate=0.0)
    model = transformers.T5ForConditionalGeneration(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:  # initialised to ones: random scales make a swapped norm show
                p.add_(0.5 * torch.randn_like(p))
    if kind in ("untied", "silu"):
        model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, D))
    return model


def _logits(model, params, enc_BL, enc_seg_BL, enc_pos_BL, dec_BT, seg_BT, pos_BT) -> np.ndarray:
    args = (enc_BL, enc_seg_BL, enc_pos_BL, dec_BT, seg_BT, pos_BT)
    return np.asarray(model.apply({"params": params}, *(jnp.asarray(a) for a in args)))


def _reference(hf, enc_BL: np.ndarray, dec_BT: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return hf(input_ids=torch.tensor(enc_BL), decoder_input_ids=torch.tensor(dec_BT)).logits.numpy()


@pytest.mark.parametrize("kind", ["untied", "shared", "tied", "silu", "relu"])
def test_imported_t5_logits_equal_transformers(kind, tmp_path):
    _hf_model(kind).save_pretrained(tmp_path)
    # The reference is transformers' own reading of the directory, so both sides interpret the same files.
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    head_is_embedding = torch.equal(hf.lm_head.weight, hf.shared.weight)
    assert (head_is_embedding, hf.config.scale_decoder_outputs) == (kind in ("shared", "tied", "relu"),
                                                                     kind in ("tied", "relu"))
    model, params = _imported(tmp_path, L)

    rng = np.random.default_rng(0)
    enc_BL, dec_BT = rng.integers(0, VOCAB, size=(2, L)), rng.integers(0, VOCAB, size=(2, T))
    ones = np.ones_like
    got = _logits(model, params, enc_BL, ones(enc_BL), np.broadcast_to(np.arange(L), enc_BL.shape), dec_BT,
                  ones(dec_BT), np.broadcast_to(np.arange(T), dec_BT.shape))
    diff = float(np.abs(got - _reference(hf, enc_BL, dec_BT)).max())
    print(f"t5 {kind}: max |logits difference| {diff:.2e}")
    assert diff <= TOLERANCE, f"t5 {kind}: max |logits difference| {diff}"

    # Packed: two documents in each of the encoder and decoder rows, each as if alone in transformers.
    enc_a, enc_b, dec_a, dec_b = enc_BL[0, :15], enc_BL[1, :25], dec_BT[0, :6], dec_BT[1, :10]
    enc_seg, dec_seg = np.array([[1] * 15 + [2] * 25]), np.array([[1] * 6 + [2] * 10])
    enc_pos, dec_pos = np.array([[*range(15), *range(25)]]), np.array([[*range(6), *range(10)]])
    got = _logits(model, params, np.concatenate([enc_a, enc_b])[None], enc_seg, enc_pos,
                  np.concatenate([dec_a, dec_b])[None], dec_seg, dec_pos)[0]
    alone = [_reference(hf, e[None], d[None])[0] for e, d in ((enc_a, dec_a), (enc_b, dec_b))]
    diff = float(np.abs(got - np.concatenate(alone)).max())
    print(f"t5 {kind} packed: max |logits difference| {diff:.2e}")
    assert diff <= TOLERANCE, f"t5 {kind} packed: max |logits difference| {diff}"


def test_t5_without_a_counterpart_is_refused(tmp_path):
    # A scaled head of its own (transformers reads this directory as untied and scaled): no model config has that.
    model = _hf_model("tied")
    model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, D))
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="has an lm_head of its own"):
        read_portable(tmp_path)
    # An MLP kind llm_jax does not have.
    transformers.T5Config(d_model=D, num_heads=4, vocab_size=VOCAB, feed_forward_proj="gelu").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="feed_forward_proj 'gelu' is not supported"):
        import_hf(tmp_path)
