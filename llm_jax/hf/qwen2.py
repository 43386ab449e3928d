"""Qwen2: Llama's layout with biases on the query, key and value projections (model.qkv_bias) and no sliding
window (checkpoints that use one are refused)."""

from llm_jax.hf import llama
from llm_jax.hf.mapping import Tensor, reshaped

ARCHITECTURE = "Qwen2ForCausalLM"


def model_keys(hf: dict) -> dict:
    if hf.get("use_sliding_window"):
        raise ValueError("Qwen2 with use_sliding_window=true is not supported (llm_jax attends over the whole "
                         "context)")
    return {**llama.model_keys({**hf, "attention_bias": False}), "qkv_bias": True}


check = llama.check


def hf_config(m: dict) -> dict:
    """The config.json fields that model_keys reads back as `m`."""
    config = {**llama.hf_config(m), "model_type": "qwen2", "use_sliding_window": False}
    for key in ("attention_bias", "mlp_bias", "head_dim"):  # Qwen2 has q/k/v biases always, and D / H heads
        config.pop(key)
    return config


def table(m: dict) -> list[Tensor]:
    out = llama.table(m)
    H, G, K = m["num_heads"], m["num_kv_heads"], m["head_dim"]
    for i in range(m["num_layers"]):
        hf, ours = f"model.layers.{i}.self_attn.", f"layers.{i}.attn."
        out += [reshaped(hf + "q_proj.bias", ours + "bq", (H, K)), reshaped(hf + "k_proj.bias", ours + "bk", (G, K)),
                reshaped(hf + "v_proj.bias", ours + "bv", (G, K))]
    return out
