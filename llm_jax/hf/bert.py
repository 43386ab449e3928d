"""BERT (BertForMaskedLM, or BertForPreTraining's file, whose next-sentence head is left out): post-LN blocks,
learned positions and token types, biases everywhere, and the masked-LM head (dense, GELU, LayerNorm, decoder
tied to the word embeddings unless the config unties it, per-token bias).

Hugging Face stores linears as [out, in]. Files written before LayerNorm was renamed in PyTorch name its
parameters gamma / beta; transformers still loads those, so this does too.
"""

from llm_jax.hf.mapping import Tensor, layernorm, linear, reshaped, same

ARCHITECTURE = "BertForMaskedLM"
# BERT's "gelu" is the exact (erf) one; the tanh approximations are llm_jax's "gelu".
_ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu"}
_HF_ACTIVATIONS = {"gelu_exact": "gelu", "gelu": "gelu_new"}
# An untied decoder's bias is the head's own (one tensor in transformers), which older files do not repeat.
ALIASES = {"cls.predictions.decoder.bias": "cls.predictions.bias"}


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


def hf_config(m: dict) -> dict:
    """The config.json fields that model_keys reads back as `m`."""
    return {"model_type": "bert", "num_hidden_layers": m["num_layers"], "hidden_size": m["d_model"],
            "num_attention_heads": m["num_heads"], "intermediate_size": m["mlp_dim"],
            "max_position_embeddings": m["max_seq_len"], "vocab_size": m["vocab_size"],
            "type_vocab_size": m["type_vocab_size"], "layer_norm_eps": m["norm_eps"],
            "hidden_act": _HF_ACTIVATIONS.get(m["mlp"], m["mlp"]),
            "position_embedding_type": "absolute", "tie_word_embeddings": m["tie_embeddings"]}


def table(m: dict) -> list[Tensor]:
    D, H, K, F = m["d_model"], m["num_heads"], m["head_dim"], m["mlp_dim"]
    out = [same("bert.embeddings.word_embeddings.weight", "embedding", (m["vocab_size"], D)),
           same("bert.embeddings.position_embeddings.weight", "pos_embedding", (m["max_seq_len"], D)),
           same("bert.embeddings.token_type_embeddings.weight", "type_embedding", (m["type_vocab_size"], D)),
           *layernorm("bert.embeddings.LayerNorm.", "embed_norm", D)]
    for i in range(m["num_layers"]):
        hf, ours = f"bert.encoder.layer.{i}.", f"layers.{i}."
        for hf_name, name in (("query", "q"), ("key", "k"), ("value", "v")):
            out += [linear(f"{hf}attention.self.{hf_name}.weight", f"{ours}attn.w{name}", (D,), (H, K)),
                    reshaped(f"{hf}attention.self.{hf_name}.bias", f"{ours}attn.b{name}", (H, K))]
        out += [linear(hf + "attention.output.dense.weight", f"{ours}attn.wo", (H, K), (D,)),
                same(hf + "attention.output.dense.bias", f"{ours}attn.bo", (D,)),
                *layernorm(hf + "attention.output.LayerNorm.", ours + "attn_norm", D),
                linear(hf + "intermediate.dense.weight", f"{ours}mlp.wi", (D,), (F,)),
                same(hf + "intermediate.dense.bias", f"{ours}mlp.bi", (F,)),
                linear(hf + "output.dense.weight", f"{ours}mlp.wo", (F,), (D,)),
                same(hf + "output.dense.bias", f"{ours}mlp.bo", (D,)),
                *layernorm(hf + "output.LayerNorm.", ours + "mlp_norm", D)]
    out += [linear("cls.predictions.transform.dense.weight", "mlm_head.wi", (D,), (D,)),
            same("cls.predictions.transform.dense.bias", "mlm_head.bi", (D,)),
            *layernorm("cls.predictions.transform.LayerNorm.", "mlm_head.norm", D),
            same("cls.predictions.bias", "mlm_head.bias", (m["vocab_size"],))]
    if not m["tie_embeddings"]:
        out += [linear("cls.predictions.decoder.weight", "mlm_head.unembed", (D,), (m["vocab_size"],)),
                same("cls.predictions.decoder.bias", "mlm_head.bias", (m["vocab_size"],))]
    return out
