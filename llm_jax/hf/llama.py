"""Llama 2 / 3 / 3.1 / 3.2 (and Mistral's layout): RMSNorm, SwiGLU, rotary positions (Llama 3.1's scaling), grouped
query attention, tied or untied head.

Hugging Face stores linears as [out, in]; its q/k projections already use the half-split rotary layout that
models/layers.py's `rope` applies, so heads map over without a permutation.
"""

from collections.abc import Callable, Iterator

import numpy as np

Read = Callable[[str], np.ndarray]


def _rope_keys(hf: dict) -> dict:
    scaling = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    theta = hf.get("rope_theta", scaling.get("rope_theta", 10000.0))
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind in ("default", None):
        return {"rope_theta": float(theta)}
    if kind != "llama3":
        raise ValueError(f"rope scaling '{kind}' is not supported (only Llama 3.1's 'llama3')")
    return {"rope_theta": float(theta), "rope_scaling": "llama3", "rope_scaling_factor": float(scaling["factor"]),
            "rope_low_freq_factor": float(scaling["low_freq_factor"]),
            "rope_high_freq_factor": float(scaling["high_freq_factor"]),
            "rope_original_max_len": int(scaling["original_max_position_embeddings"])}


def model_keys(hf: dict) -> dict:
    H = hf["num_attention_heads"]
    return {"family": "decoder", "num_layers": hf["num_hidden_layers"], "d_model": hf["hidden_size"],
            "num_heads": H, "num_kv_heads": hf.get("num_key_value_heads") or H,
            "head_dim": hf.get("head_dim") or hf["hidden_size"] // H, "mlp_dim": hf["intermediate_size"],
            "max_seq_len": hf["max_position_embeddings"], "vocab_size": hf["vocab_size"], "norm": "rmsnorm",
            "norm_eps": hf.get("rms_norm_eps", 1e-6), "positions": "rope", "mlp": "swiglu",
            "tie_embeddings": bool(hf.get("tie_word_embeddings", False)), "use_bias": False, **_rope_keys(hf)}


def tensors(read: Read, m: dict) -> Iterator[tuple[str, np.ndarray]]:
    D, H, G, K = m["d_model"], m["num_heads"], m["num_kv_heads"], m["head_dim"]
    yield "embedding", read("model.embed_tokens.weight")
    for i in range(m["num_layers"]):
        hf, ours = f"model.layers.{i}.", f"layers.{i}."
        yield f"{ours}attn.wq", read(hf + "self_attn.q_proj.weight").T.reshape(D, H, K)
        yield f"{ours}attn.wk", read(hf + "self_attn.k_proj.weight").T.reshape(D, G, K)
        yield f"{ours}attn.wv", read(hf + "self_attn.v_proj.weight").T.reshape(D, G, K)
        yield f"{ours}attn.wo", read(hf + "self_attn.o_proj.weight").T.reshape(H, K, D)
        yield f"{ours}mlp.wi_gate", read(hf + "mlp.gate_proj.weight").T
        yield f"{ours}mlp.wi_up", read(hf + "mlp.up_proj.weight").T
        yield f"{ours}mlp.wo", read(hf + "mlp.down_proj.weight").T
        yield f"{ours}attn_norm.scale", read(hf + "input_layernorm.weight")
        yield f"{ours}mlp_norm.scale", read(hf + "post_attention_layernorm.weight")
    yield "final_norm.scale", read("model.norm.weight")
    if not m["tie_embeddings"]:
        yield "unembed", read("lm_head.weight").T
