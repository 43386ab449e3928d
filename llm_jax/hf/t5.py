"""T5 (v1.1, and the original T5 / v1.0) -> the encoder_decoder family: RMSNorm without biases, gated MLPs (v1.1) or
ReLU ones (the original), one relative
position bias table per stack, unscaled attention scores, one embedding shared by both stacks.

Hugging Face stores linears as [out, in] and each stack's bias table [buckets, heads] in its block 0 only (the
other blocks reuse it). Its gated MLP applies the activation to `wi_0` and multiplies by the linear `wi_1`.

The output head, as transformers reads a directory: decoder outputs are scaled by d_model**-0.5 when
`scale_decoder_outputs` says so (transformers 5), or else when `tie_word_embeddings` is true (transformers 4 and
the published configs: T5 v1.0 scales, v1.1 does not). An unscaled head is `lm_head.weight` when the file has one,
else the shared embedding (transformers 5 builds v1.1 with the two as one tensor and saves only `shared.weight`); a
scaled head must be the embedding.
"""

import numpy as np

from llm_jax.hf.mapping import Read, Tensor, linear, same

ARCHITECTURE = "T5ForConditionalGeneration"
# feed_forward_proj -> model.mlp; "gated-gelu" is the tanh approximation (gelu_new), which geglu uses.
_MLPS = {"gated-gelu": "geglu", "gated-gelu_new": "geglu", "gated-silu": "swiglu", "relu": "relu"}
# Where a file lacks a tensor, the one transformers uses in its place.
ALIASES = {"lm_head.weight": "shared.weight"}


def _scaled_head(hf: dict) -> bool:
    return bool(hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True)))


def model_keys(hf: dict) -> dict:
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in _MLPS:
        raise ValueError(f"T5 feed_forward_proj {proj!r} is not supported (only {', '.join(_MLPS)})")
    H = hf["num_heads"]
    # The encoder_decoder family scales the decoder output exactly when the head is the shared embedding, which is
    # T5 v1.0; an unscaled head (v1.1) is imported as its own `unembed`, even when it equals the embedding.
    # T5 has no position table; max_seq_len is its pre-training input length, a limit the config may raise.
    return {"family": "encoder_decoder", "num_layers": hf["num_layers"],
            "num_decoder_layers": hf.get("num_decoder_layers") or hf["num_layers"], "d_model": hf["d_model"],
            "num_heads": H, "num_kv_heads": H, "head_dim": hf["d_kv"], "mlp_dim": hf["d_ff"],
            "max_seq_len": hf.get("n_positions", 512), "vocab_size": hf["vocab_size"], "norm": "rmsnorm",
            "norm_eps": hf.get("layer_norm_epsilon", 1e-6), "positions": "relative",
            "relative_buckets": hf.get("relative_attention_num_buckets", 32),
            "relative_max_distance": hf.get("relative_attention_max_distance", 128), "mlp": _MLPS[proj],
            "tie_embeddings": _scaled_head(hf), "use_bias": False}


def hf_config(m: dict) -> dict:
    """The config.json fields that model_keys reads back as `m` (both transformers 4's and 5's head switch)."""
    return {"model_type": "t5", "num_layers": m["num_layers"], "num_decoder_layers": m["num_decoder_layers"],
            "d_model": m["d_model"], "num_heads": m["num_heads"], "d_kv": m["head_dim"], "d_ff": m["mlp_dim"],
            "n_positions": m["max_seq_len"], "vocab_size": m["vocab_size"], "layer_norm_epsilon": m["norm_eps"],
            "relative_attention_num_buckets": m["relative_buckets"],
            "relative_attention_max_distance": m["relative_max_distance"],
            "feed_forward_proj": {v: k for k, v in reversed(_MLPS.items())}.get(m["mlp"], m["mlp"]),
            "tie_word_embeddings": m["tie_embeddings"], "scale_decoder_outputs": m["tie_embeddings"],
            "is_encoder_decoder": True}


def check(read: Read, m: dict) -> None:
    """A scaled head must be the embedding: a file with another lm_head would not give transformers' logits."""
    if m["tie_embeddings"] and not np.array_equal(read("lm_head.weight"), read("shared.weight")):
        raise ValueError("this T5 scales its decoder outputs (tie_word_embeddings or scale_decoder_outputs) yet "
                         "has an lm_head of its own; the encoder_decoder family scales only a head tied to the "
                         "embedding (model.tie_embeddings)")


def _attention(hf: str, ours: str, m: dict) -> list[Tensor]:
    D, H, K = m["d_model"], m["num_heads"], m["head_dim"]
    return [*(linear(f"{hf}.{n}.weight", f"{ours}.w{n}", (D,), (H, K)) for n in "qkv"),
            linear(f"{hf}.o.weight", f"{ours}.wo", (H, K), (D,))]


def _stack(stack: str, layers: int, m: dict) -> list[Tensor]:
    """One stack's blocks: layer.0 self-attention, (decoder) layer.1 cross-attention, then the MLP."""
    D, F = m["d_model"], m["mlp_dim"]
    out = [same(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", f"{stack}.relative_bias",
                (m["relative_buckets"], m["num_heads"]))]
    for i in range(layers):
        hf, ours = f"{stack}.block.{i}.layer", f"{stack}.layers.{i}"
        out += [*_attention(f"{hf}.0.SelfAttention", f"{ours}.attn", m),
                same(f"{hf}.0.layer_norm.weight", f"{ours}.attn_norm.scale", (D,))]
        ff = 1
        if stack == "decoder":
            out += [*_attention(f"{hf}.1.EncDecAttention", f"{ours}.cross", m),
                    same(f"{hf}.1.layer_norm.weight", f"{ours}.cross_norm.scale", (D,))]
            ff = 2
        if m["mlp"] == "relu":  # the original T5: one input projection
            out.append(linear(f"{hf}.{ff}.DenseReluDense.wi.weight", f"{ours}.mlp.wi", (D,), (F,)))
        else:
            out += [linear(f"{hf}.{ff}.DenseReluDense.wi_0.weight", f"{ours}.mlp.wi_gate", (D,), (F,)),
                    linear(f"{hf}.{ff}.DenseReluDense.wi_1.weight", f"{ours}.mlp.wi_up", (D,), (F,))]
        out += [linear(f"{hf}.{ff}.DenseReluDense.wo.weight", f"{ours}.mlp.wo", (F,), (D,)),
                same(f"{hf}.{ff}.layer_norm.weight", f"{ours}.mlp_norm.scale", (D,))]
    return [*out, same(f"{stack}.final_layer_norm.weight", f"{stack}.final_norm.scale", (D,))]


def table(m: dict) -> list[Tensor]:
    out = [same("shared.weight", "embedding", (m["vocab_size"], m["d_model"]))]
    if not m["tie_embeddings"]:
        out.append(linear("lm_head.weight", "unembed", (m["d_model"],), (m["vocab_size"],)))
    return out + _stack("encoder", m["num_layers"], m) + _stack("decoder", m["num_decoder_layers"], m)
