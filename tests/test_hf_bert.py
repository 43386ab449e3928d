"""BERT import parity: a small random BertForMaskedLM built in `transformers` (no download), imported, gives the same
masked-LM logits in llm_jax to 1e-4 in float32 — on random tokens, with token types, and on a packed row."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from llm_jax.hf import bert
from llm_jax.hf.importer import read_portable
from tests.test_hf_parity import VOCAB, L, _imported


def _hf_bert(tied: bool) -> transformers.BertForMaskedLM:
    torch.manual_seed(0)
    # initializer_range 0.2, not BERT's 0.02: the MLPs then see inputs of order 1, where GELU's exact and tanh
    # forms differ by more than the tolerance, so the activation mapping is tested too.
    cfg = transformers.BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=96,
                                  vocab_size=VOCAB, max_position_embeddings=64, type_vocab_size=2,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                  tie_word_embeddings=tied, initializer_range=0.2)
    model = transformers.BertForMaskedLM(cfg).eval()
    if not tied:
        # A fresh untied decoder starts as a copy of the embeddings; make it differ so the test can tell them apart.
        with torch.no_grad():
            model.cls.predictions.decoder.weight.normal_(0.0, cfg.initializer_range)
    return model


@pytest.fixture(scope="module", params=["tied", "untied"])
def imported(request, tmp_path_factory):
    hf = _hf_bert(request.param == "tied")
    directory = tmp_path_factory.mktemp(f"bert_{request.param}")
    hf.save_pretrained(directory)
    model, params = _imported(directory)
    return request.param, hf, model, params


def _logits(model, params, tokens_BL, segment_ids_BL, positions_BL, types_BL=None) -> np.ndarray:
    types = None if types_BL is None else jnp.asarray(types_BL)
    return np.asarray(model.apply({"params": params}, jnp.asarray(tokens_BL), jnp.asarray(segment_ids_BL),
                                  jnp.asarray(positions_BL), types))


def _hf_logits(hf, tokens_BL, types_BL=None) -> np.ndarray:
    types = None if types_BL is None else torch.tensor(types_BL)
    with torch.no_grad():
        return hf(torch.tensor(tokens_BL), attention_mask=torch.ones(tokens_BL.shape, dtype=torch.long),
                  token_type_ids=types).logits.numpy()


def _check(name: str, got: np.ndarray, expected: np.ndarray) -> None:
    diff = float(np.abs(got - expected).max())
    print(f"{name}: max |logits difference| {diff:.2e}")
    assert diff <= 1e-4, f"{name}: max |logits difference| {diff}"


@pytest.mark.parametrize("with_types", [False, True], ids=["no_types", "token_types"])
def test_bert_logits_equal_transformers(imported, with_types):
    kind, hf, model, params = imported
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCAB, size=(2, L))
    types = rng.integers(0, 2, size=tokens.shape) if with_types else None
    seg, pos = np.ones_like(tokens), np.broadcast_to(np.arange(L), tokens.shape)
    _check(f"bert {kind} types={with_types}", _logits(model, params, tokens, seg, pos, types),
           _hf_logits(hf, tokens, types))


def test_bert_packed_row_equals_documents_alone(imported):
    kind, hf, model, params = imported
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, VOCAB, size=10), rng.integers(0, VOCAB, size=14)
    types_a, types_b = np.array([0] * 6 + [1] * 4), np.array([0] * 9 + [1] * 5)  # sentence A then B in each
    packed, types = np.concatenate([a, b])[None], np.concatenate([types_a, types_b])[None]
    seg = np.array([[1] * 10 + [2] * 14])
    pos = np.array([list(range(10)) + list(range(14))])
    got = _logits(model, params, packed, seg, pos, types)[0]
    alone = [_hf_logits(hf, x[None], t[None])[0] for x, t in ((a, types_a), (b, types_b))]
    _check(f"bert {kind} packed", got, np.concatenate(alone))


def test_bert_legacy_gamma_beta_names_import_the_same(tmp_path):
    _hf_bert(tied=True).save_pretrained(tmp_path / "new")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text((tmp_path / "new" / "config.json").read_text())
    renamed = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in load_file(tmp_path / "new" / "model.safetensors").items()}
    assert any(k.endswith("LayerNorm.gamma") for k in renamed)
    save_file(renamed, tmp_path / "old" / "model.safetensors")
    both = []
    for sub in ("new", "old"):
        both.append(read_portable(tmp_path / sub)[1])
    assert both[0].keys() == both[1].keys()
    for name, value in both[0].items():
        np.testing.assert_array_equal(both[1][name], value, err_msg=name)


def test_bert_unsupported_activation_is_named():
    cfg = _hf_bert(tied=True).config.to_dict() | {"hidden_act": "relu"}
    with pytest.raises(ValueError, match="hidden_act 'relu'"):
        bert.model_keys(cfg)
