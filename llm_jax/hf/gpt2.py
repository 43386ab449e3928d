"""GPT-2: learned positions, LayerNorm with biases, tanh-approximate GELU, biases in every linear, tied head.

Hugging Face stores GPT-2's linears as Conv1D (weight [in, out]) and q, k, v as one `c_attn` of width 3D.
"""

from collections.abc import Callable, Iterator

import numpy as np

Read = Callable[[str], np.ndarray]


def model_keys(hf: dict) -> dict:
    D, H = hf["n_embd"], hf["n_head"]
    return {"family": "decoder", "num_layers": hf["n_layer"], "d_model": D, "num_heads": H, "num_kv_heads": H,
            "head_dim": D // H, "mlp_dim": hf.get("n_inner") or 4 * D, "max_seq_len": hf["n_positions"],
            "vocab_size": hf["vocab_size"], "norm": "layernorm", "norm_eps": hf.get("layer_norm_epsilon", 1e-5),
            "positions": "learned", "mlp": "gelu", "tie_embeddings": True, "use_bias": True}


def tensors(read: Read, m: dict) -> Iterator[tuple[str, np.ndarray]]:
    """(portable name, array) for every parameter, in the model's layouts."""
    D, H, K = m["d_model"], m["num_heads"], m["head_dim"]
    yield "embedding", read("transformer.wte.weight")
    yield "pos_embedding", read("transformer.wpe.weight")
    for i in range(m["num_layers"]):
        hf, ours = f"transformer.h.{i}.", f"layers.{i}."
        w_D3D, b_3D = read(hf + "attn.c_attn.weight"), read(hf + "attn.c_attn.bias")
        for j, name in enumerate(("q", "k", "v")):
            yield f"{ours}attn.w{name}", w_D3D[:, j * D:(j + 1) * D].reshape(D, H, K)
            yield f"{ours}attn.b{name}", b_3D[j * D:(j + 1) * D].reshape(H, K)
        yield f"{ours}attn.wo", read(hf + "attn.c_proj.weight").reshape(H, K, D)
        yield f"{ours}attn.bo", read(hf + "attn.c_proj.bias")
        yield f"{ours}mlp.wi", read(hf + "mlp.c_fc.weight")
        yield f"{ours}mlp.bi", read(hf + "mlp.c_fc.bias")
        yield f"{ours}mlp.wo", read(hf + "mlp.c_proj.weight")
        yield f"{ours}mlp.bo", read(hf + "mlp.c_proj.bias")
        for hf_norm, norm in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
            yield f"{ours}{norm}.scale", read(f"{hf}{hf_norm}.weight")
            yield f"{ours}{norm}.bias", read(f"{hf}{hf_norm}.bias")
    yield "final_norm.scale", read("transformer.ln_f.weight")
    yield "final_norm.bias", read("transformer.ln_f.bias")
