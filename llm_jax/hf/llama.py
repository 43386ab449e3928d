"""Llama 2 / 3 / 3.1 / 3.2 (and Mistral's layout): RMSNorm, SwiGLU, rotary positions (Llama 3.1's scaling), grouped
query attention, tied or untied head.

Hugging Face stores linears as [out, in]; its q/k projections already use the half-split rotary layout that
models/layers.py's `rope` applies, so heads map over without a permutation.
"""

from llm_jax.hf.mapping import Tensor, check_tied, linear, same

ARCHITECTURE = "LlamaForCausalLM"
_LLAMA3 = {"rope_scaling_factor": "factor", "rope_low_freq_factor": "low_freq_factor",
           "rope_high_freq_factor": "high_freq_factor", "rope_original_max_len": "original_max_position_embeddings"}


def _rope_keys(hf: dict) -> dict:
    scaling = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    theta = hf.get("rope_theta", scaling.get("rope_theta", 10000.0))
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind in ("default", None):
        return {"rope_theta": float(theta), "rope_scaling": "none"}
    if kind != "llama3":
        raise ValueError(f"rope scaling '{kind}' is not supported (only Llama 3.1's 'llama3')")
    keys = {ours: float(scaling[theirs]) for ours, theirs in _LLAMA3.items()}
    keys["rope_original_max_len"] = int(keys["rope_original_max_len"])
    return {"rope_theta": float(theta), "rope_scaling": "llama3", **keys}


def model_keys(hf: dict) -> dict:
    H = hf["num_attention_heads"]
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"Llama hidden_act {hf['hidden_act']!r} is not supported (only silu: SwiGLU)")
    # Mistral's sliding window changes nothing for sequences that fit in it: such is the longest context allowed.
    longest = min(hf["max_position_embeddings"], hf.get("sliding_window") or hf["max_position_embeddings"])
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ValueError("Llama with attention_bias or mlp_bias is not supported (llm_jax's use_bias puts biases in "
                         "both the attention and the MLP, and in the norms)")
    return {"family": "decoder", "num_layers": hf["num_hidden_layers"], "d_model": hf["hidden_size"],
            "num_heads": H, "num_kv_heads": hf.get("num_key_value_heads") or H,
            "head_dim": hf.get("head_dim") or hf["hidden_size"] // H, "mlp_dim": hf["intermediate_size"],
            "max_seq_len": longest, "vocab_size": hf["vocab_size"], "norm": "rmsnorm",
            "norm_eps": hf.get("rms_norm_eps", 1e-6), "positions": "rope", "mlp": "swiglu",
            "tie_embeddings": bool(hf.get("tie_word_embeddings", False)), "use_bias": False, "qkv_bias": False,
            **_rope_keys(hf)}


def hf_config(m: dict) -> dict:
    """The config.json fields that model_keys reads back as `m`."""
    rope = {"rope_type": "default", "rope_theta": m["rope_theta"]}
    if m["rope_scaling"] == "llama3":
        rope = {"rope_type": "llama3", "rope_theta": m["rope_theta"],
                **{theirs: m[ours] for ours, theirs in _LLAMA3.items()}}
    return {"model_type": "llama", "num_hidden_layers": m["num_layers"], "hidden_size": m["d_model"],
            "num_attention_heads": m["num_heads"], "num_key_value_heads": m["num_kv_heads"],
            "head_dim": m["head_dim"], "intermediate_size": m["mlp_dim"], "max_position_embeddings": m["max_seq_len"],
            "vocab_size": m["vocab_size"], "rms_norm_eps": m["norm_eps"], "hidden_act": "silu",
            "tie_word_embeddings": m["tie_embeddings"], "attention_bias": False, "mlp_bias": False,
            "rope_theta": m["rope_theta"], "rope_scaling": rope, "rope_parameters": rope}


def check(read, m: dict) -> None:
    """transformers uses a file's own lm_head when it differs from the embedding, whatever the config says."""
    check_tied(read, m, "lm_head.weight", "model.embed_tokens.weight")


def table(m: dict) -> list[Tensor]:
    D, H, G, K, F = m["d_model"], m["num_heads"], m["num_kv_heads"], m["head_dim"], m["mlp_dim"]
    out = [same("model.embed_tokens.weight", "embedding", (m["vocab_size"], D))]
    for i in range(m["num_layers"]):
        hf, ours = f"model.layers.{i}.", f"layers.{i}."
        out += [linear(hf + "self_attn.q_proj.weight", f"{ours}attn.wq", (D,), (H, K)),
                linear(hf + "self_attn.k_proj.weight", f"{ours}attn.wk", (D,), (G, K)),
                linear(hf + "self_attn.v_proj.weight", f"{ours}attn.wv", (D,), (G, K)),
                linear(hf + "self_attn.o_proj.weight", f"{ours}attn.wo", (H, K), (D,)),
                linear(hf + "mlp.gate_proj.weight", f"{ours}mlp.wi_gate", (D,), (F,)),
                linear(hf + "mlp.up_proj.weight", f"{ours}mlp.wi_up", (D,), (F,)),
                linear(hf + "mlp.down_proj.weight", f"{ours}mlp.wo", (F,), (D,)),
                same(hf + "input_layernorm.weight", f"{ours}attn_norm.scale", (D,)),
                same(hf + "post_attention_layernorm.weight", f"{ours}mlp_norm.scale", (D,))]
    out.append(same("model.norm.weight", "final_norm.scale", (D,)))
    return out if m["tie_embeddings"] else [*out, linear("lm_head.weight", "unembed", (D,), (m["vocab_size"],))]
