"""T5 (v1.1 and v1.0 layouts) -> the encoder_decoder family: RMSNorm without biases, gated MLPs, one relative
position bias table per stack, unscaled attention scores, one embedding shared by both stacks.

Hugging Face stores linears as [out, in] and each stack's bias table [buckets, heads] in its block 0 only (the
other blocks reuse it). Its gated MLP applies the activation to `wi_0` and multiplies by the linear `wi_1`.

The output head, as transformers reads a directory: decoder outputs are scaled by d_model**-0.5 when
`scale_decoder_outputs` says so (transformers 5), or else when `tie_word_embeddings` is true (transformers 4 and
the published configs: T5 v1.0 scales, v1.1 does not). An unscaled head is `lm_head.weight` when the file has one,
else the shared embedding (transformers 5 builds v1.1 with the two as one tensor and saves only `shared.weight`); a
scaled head must be the embedding.
"""

from collections.abc import Callable, Iterator

import numpy as np

Read = Callable[[str], np.ndarray]

# feed_forward_proj -> model.mlp; "gated-gelu" is the tanh approximation (gelu_new), which geglu uses.
_MLPS = {"gated-gelu": "geglu", "gated-gelu_new": "geglu", "gated-silu": "swiglu"}


def _scaled_head(hf: dict) -> bool:
    return bool(hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True)))


def model_keys(hf: dict) -> dict:
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in _MLPS:
        raise ValueError(f"T5 feed_forward_proj {proj!r} is not supported (only {', '.join(_MLPS)}: T5 v1.1's "
                         f"gated MLPs; the original T5's relu MLP has no model.mlp counterpart)")
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


def _optional(read: Read, name: str) -> np.ndarray | None:
    # read raises importer.HFError (a ValueError; importing it here would be circular) for a missing tensor.
    try:
        return read(name)
    except ValueError:
        return None


def _attention(read: Read, hf: str, ours: str, m: dict) -> Iterator[tuple[str, np.ndarray]]:
    D, H, K = m["d_model"], m["num_heads"], m["head_dim"]
    for name in ("q", "k", "v"):
        yield f"{ours}.w{name}", read(f"{hf}.{name}.weight").T.reshape(D, H, K)
    yield f"{ours}.wo", read(f"{hf}.o.weight").T.reshape(H, K, D)


def _stack(read: Read, stack: str, layers: int, m: dict) -> Iterator[tuple[str, np.ndarray]]:
    """One stack's blocks: layer.0 self-attention, (decoder) layer.1 cross-attention, then the MLP."""
    yield f"{stack}.relative_bias", read(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    for i in range(layers):
        hf, ours = f"{stack}.block.{i}.layer", f"{stack}.layers.{i}"
        yield from _attention(read, f"{hf}.0.SelfAttention", f"{ours}.attn", m)
        yield f"{ours}.attn_norm.scale", read(f"{hf}.0.layer_norm.weight")
        ff = 1
        if stack == "decoder":
            yield from _attention(read, f"{hf}.1.EncDecAttention", f"{ours}.cross", m)
            yield f"{ours}.cross_norm.scale", read(f"{hf}.1.layer_norm.weight")
            ff = 2
        yield f"{ours}.mlp.wi_gate", read(f"{hf}.{ff}.DenseReluDense.wi_0.weight").T
        yield f"{ours}.mlp.wi_up", read(f"{hf}.{ff}.DenseReluDense.wi_1.weight").T
        yield f"{ours}.mlp.wo", read(f"{hf}.{ff}.DenseReluDense.wo.weight").T
        yield f"{ours}.mlp_norm.scale", read(f"{hf}.{ff}.layer_norm.weight")
    yield f"{stack}.final_norm.scale", read(f"{stack}.final_layer_norm.weight")


def tensors(read: Read, m: dict) -> Iterator[tuple[str, np.ndarray]]:
    """(portable name, array) for every parameter, in the model's layouts."""
    embedding_VD, head_VD = read("shared.weight"), _optional(read, "lm_head.weight")
    if m["tie_embeddings"] and head_VD is not None and not np.array_equal(head_VD, embedding_VD):
        raise ValueError("this T5 scales its decoder outputs (tie_word_embeddings or scale_decoder_outputs) yet "
                         "has an lm_head of its own; the encoder_decoder family scales only a head tied to the "
                         "embedding (model.tie_embeddings)")
    yield "embedding", embedding_VD
    if not m["tie_embeddings"]:
        yield "unembed", (embedding_VD if head_VD is None else head_VD).T
    yield from _stack(read, "encoder", m["num_layers"], m)
    yield from _stack(read, "decoder", m["num_decoder_layers"], m)
