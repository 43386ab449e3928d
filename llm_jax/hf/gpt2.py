"""GPT-2: learned positions, LayerNorm with biases, tanh-approximate GELU, biases in every linear, tied head.

Hugging Face stores GPT-2's linears as Conv1D (weight [in, out]) and q, k, v as one `c_attn` of width 3D.
"""

from llm_jax.hf.mapping import Tensor, check_tied, conv1d, fused, layernorm, same

ARCHITECTURE = "GPT2LMHeadModel"


# activation_function -> model.mlp: transformers' "gelu" is the exact (erf) one, the others the tanh approximation.
_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu", "gelu": "gelu_exact"}


def model_keys(hf: dict) -> dict:
    act = hf.get("activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        raise ValueError(f"GPT-2 activation_function {act!r} is not supported; supported: {', '.join(_ACTIVATIONS)}")
    for key, fine in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False)):
        if hf.get(key, fine) != fine:
            raise ValueError(f"GPT-2 with {key}={hf[key]} is not supported (llm_jax scales attention scores by "
                             "1/sqrt(head width) in every layer)")
    D, H = hf["n_embd"], hf["n_head"]
    return {"family": "decoder", "num_layers": hf["n_layer"], "d_model": D, "num_heads": H, "num_kv_heads": H,
            "head_dim": D // H, "mlp_dim": hf.get("n_inner") or 4 * D, "max_seq_len": hf["n_positions"],
            "vocab_size": hf["vocab_size"], "norm": "layernorm", "norm_eps": hf.get("layer_norm_epsilon", 1e-5),
            "positions": "learned", "mlp": _ACTIVATIONS[act], "tie_embeddings": True, "use_bias": True}


def hf_config(m: dict) -> dict:
    """The config.json fields that model_keys reads back as `m`."""
    return {"model_type": "gpt2", "n_layer": m["num_layers"], "n_embd": m["d_model"], "n_head": m["num_heads"],
            "n_inner": m["mlp_dim"], "n_positions": m["max_seq_len"], "n_ctx": m["max_seq_len"],
            "vocab_size": m["vocab_size"], "layer_norm_epsilon": m["norm_eps"],
            "activation_function": {"gelu": "gelu_new", "gelu_exact": "gelu"}.get(m["mlp"], m["mlp"]),
            "tie_word_embeddings": True}


def check(read, m: dict) -> None:
    """transformers uses a file's own lm_head when it differs from the embedding; llm_jax's GPT-2 is tied."""
    check_tied(read, m, "lm_head.weight", "transformer.wte.weight")


def table(m: dict) -> list[Tensor]:
    D, H, K, F = m["d_model"], m["num_heads"], m["head_dim"], m["mlp_dim"]
    out = [same("transformer.wte.weight", "embedding", (m["vocab_size"], D)),
           same("transformer.wpe.weight", "pos_embedding", (m["max_seq_len"], D))]
    for i in range(m["num_layers"]):
        hf, ours = f"transformer.h.{i}.", f"layers.{i}."
        out += [fused(hf + "attn.c_attn.weight", [f"{ours}attn.w{n}" for n in "qkv"], (D, H, K)),
                fused(hf + "attn.c_attn.bias", [f"{ours}attn.b{n}" for n in "qkv"], (H, K)),
                conv1d(hf + "attn.c_proj.weight", f"{ours}attn.wo", (H, K), (D,)),
                same(hf + "attn.c_proj.bias", f"{ours}attn.bo", (D,)),
                conv1d(hf + "mlp.c_fc.weight", f"{ours}mlp.wi", (D,), (F,)),
                same(hf + "mlp.c_fc.bias", f"{ours}mlp.bi", (F,)),
                conv1d(hf + "mlp.c_proj.weight", f"{ours}mlp.wo", (F,), (D,)),
                same(hf + "mlp.c_proj.bias", f"{ours}mlp.bo", (D,)),
                *layernorm(hf + "ln_1.", ours + "attn_norm", D), *layernorm(hf + "ln_2.", ours + "mlp_norm", D)]
    return [*out, *layernorm("transformer.ln_f.", "final_norm", D)]
