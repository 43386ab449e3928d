"""BERT (BertForMaskedLM, or BertForPreTraining's file, whose next-sentence head is left out): post-LN blocks,
learned positions and token types, biases everywhere, and the masked-LM head (dense, GELU, LayerNorm, decoder
tied to the word embeddings unless the config unties it, per-token bias).

Hugging Face stores linears as [out, in]. Files written before LayerNorm was renamed in PyTorch name its
parameters gamma / beta; transformers still loads those, so this does too.
"""

from collections.abc import Callable, Iterator

import numpy as np

Read = Callable[[str], np.ndarray]

# BERT's "gelu" is the exact (erf) one; the tanh approximations are llm_jax's "gelu".
_ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu"}


def model_keys(hf: dict) -> dict:
    act = hf.get("hidden_act", "gelu")
    if act not in _ACTIVATIONS:
        raise ValueError(f"BERT hidden_act {act!r} is not supported; supported: {', '.join(_ACTIVATIONS)}")
    # Absent from transformers 5's config (absolute is all it builds); older files name it.
    kind = hf.get("position_embedding_type") or "absolute"
    if kind != "absolute":
        raise ValueError(f"BERT position_embedding_type {kind!r} is not supported (only 'absolute')")
    if hf.get("is_decoder"):
        raise ValueError("BERT with is_decoder=true attends causally; llm_jax's encoder is bidirectional only")
    D, H = hf["hidden_size"], hf["num_attention_heads"]
    # transformers ties the decoder to the word embeddings whenever the config says so, whatever the file holds.
    return {"family": "encoder", "num_layers": hf["num_hidden_layers"], "d_model": D, "num_heads": H,
            "num_kv_heads": H, "head_dim": D // H, "mlp_dim": hf["intermediate_size"],
            "max_seq_len": hf["max_position_embeddings"], "vocab_size": hf["vocab_size"],
            "type_vocab_size": hf.get("type_vocab_size", 2), "norm": "layernorm",
            "norm_eps": hf.get("layer_norm_eps", 1e-12), "norm_position": "post", "positions": "learned",
            "mlp": _ACTIVATIONS[act], "tie_embeddings": bool(hf.get("tie_word_embeddings", True)), "use_bias": True}


def _layernorm(read: Read, prefix: str, ours: str) -> Iterator[tuple[str, np.ndarray]]:
    # read raises importer.HFError (a ValueError; importing it here would be circular) for a missing tensor.
    try:
        scale_D, bias_D = read(prefix + "weight"), read(prefix + "bias")
    except ValueError as missing:
        try:
            scale_D, bias_D = read(prefix + "gamma"), read(prefix + "beta")
        except ValueError:
            raise missing from None
    yield f"{ours}.scale", scale_D
    yield f"{ours}.bias", bias_D


def tensors(read: Read, m: dict) -> Iterator[tuple[str, np.ndarray]]:
    """(portable name, array) for every parameter, in the model's layouts."""
    D, H, K = m["d_model"], m["num_heads"], m["head_dim"]
    yield "embedding", read("bert.embeddings.word_embeddings.weight")
    yield "pos_embedding", read("bert.embeddings.position_embeddings.weight")
    yield "type_embedding", read("bert.embeddings.token_type_embeddings.weight")
    yield from _layernorm(read, "bert.embeddings.LayerNorm.", "embed_norm")
    for i in range(m["num_layers"]):
        hf, ours = f"bert.encoder.layer.{i}.", f"layers.{i}."
        for hf_name, name in (("query", "q"), ("key", "k"), ("value", "v")):
            yield f"{ours}attn.w{name}", read(f"{hf}attention.self.{hf_name}.weight").T.reshape(D, H, K)
            yield f"{ours}attn.b{name}", read(f"{hf}attention.self.{hf_name}.bias").reshape(H, K)
        yield f"{ours}attn.wo", read(hf + "attention.output.dense.weight").T.reshape(H, K, D)
        yield f"{ours}attn.bo", read(hf + "attention.output.dense.bias")
        yield from _layernorm(read, hf + "attention.output.LayerNorm.", ours + "attn_norm")
        yield f"{ours}mlp.wi", read(hf + "intermediate.dense.weight").T
        yield f"{ours}mlp.bi", read(hf + "intermediate.dense.bias")
        yield f"{ours}mlp.wo", read(hf + "output.dense.weight").T
        yield f"{ours}mlp.bo", read(hf + "output.dense.bias")
        yield from _layernorm(read, hf + "output.LayerNorm.", ours + "mlp_norm")
    yield "mlm_head.wi", read("cls.predictions.transform.dense.weight").T
    yield "mlm_head.bi", read("cls.predictions.transform.dense.bias")
    yield from _layernorm(read, "cls.predictions.transform.LayerNorm.", "mlm_head.norm")
    yield "mlm_head.bias", read("cls.predictions.bias")
    if not m["tie_embeddings"]:
        yield "mlm_head.unembed", read("cls.predictions.decoder.weight").T
