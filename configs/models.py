"""Model presets, picked with `--config=configs/train.py:model=NAME`.

Plain names change keys of `config.model`; dotted names ("train.seq_len") set the run settings the preset is
meant for. Command-line `--config.a.b=v` overrides win over both.
"""

BERT_PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks? It is the east, and Juliet is the sun."

PRESETS = {
    # The CPU demo: a character-level model that learns Shakespeare's spelling and verse layout in minutes.
    # Small models unroll their layers: on a CPU the scanned loop's stacking of per-layer values costs ~30% of a
    # step (docs/performance.md), and four layers compile in seconds either way.
    "tiny": dict(
        num_layers=4, d_model=128, num_heads=4, mlp_dim=384, max_seq_len=256,
        norm="rmsnorm", positions="rope", mlp="swiglu", scan_layers=False,
    ),
    # The small throughput workload: nanoGPT's character-level shape.
    "nano": dict(
        num_layers=4, d_model=128, num_heads=4, mlp_dim=512, max_seq_len=64,
        norm="layernorm", positions="learned", mlp="gelu", tie_embeddings=True, scan_layers=False,
        **{"train.seq_len": 64, "train.global_batch": 12},
    ),
    # GPT-2 small (124M): learned positions, LayerNorm, GELU, tied embeddings, GPT-2's vocab padded to 50304.
    "gpt2_small": dict(
        num_layers=12, d_model=768, num_heads=12, mlp_dim=3072, max_seq_len=1024, vocab_size=50304,
        norm="layernorm", positions="learned", mlp="gelu", tie_embeddings=True,
    ),
    # Llama-3.2-1B shape: GQA 32/8, SwiGLU, RoPE theta 500k, tied embeddings.
    "llama_1b": dict(
        num_layers=16, d_model=2048, num_heads=32, num_kv_heads=8, mlp_dim=8192, max_seq_len=8192,
        vocab_size=128256, norm="rmsnorm", positions="rope", rope_theta=500000.0, mlp="swiglu",
        tie_embeddings=True, dtype="bfloat16",
    ),
    # Llama-3-8B shape: GQA 32/8, SwiGLU, RoPE theta 500k, untied output.
    "llama3_8b": dict(
        num_layers=32, d_model=4096, num_heads=32, num_kv_heads=8, mlp_dim=14336, max_seq_len=8192,
        vocab_size=128256, norm="rmsnorm", positions="rope", rope_theta=500000.0, mlp="swiglu",
        tie_embeddings=False, dtype="bfloat16", remat="full",
    ),
    # ---- encoders (BERT): bidirectional, masked-LM pretraining (objective masked_lm) ----
    # The CPU demo: learns to fill in masked characters of Shakespeare in minutes. BERT's layout (post-LN, biases,
    # token types, the MLM head) with rotary positions: with a learned position table the model sits at the
    # unigram plateau (about 24% accuracy) for longer than a CPU demo runs; bert_base keeps BERT's table.
    "bert_mini": dict(
        family="encoder", num_layers=4, d_model=128, num_heads=4, mlp_dim=512, max_seq_len=128,
        norm="layernorm", norm_eps=1e-12, positions="rope", mlp="gelu_exact", tie_embeddings=True,
        type_vocab_size=2, norm_position="post", use_bias=True, scan_layers=False,
        **{"train.seq_len": 128, "sample.prompt": BERT_PROMPT},
    ),
    # BERT-base (110M): 12 layers, width 768, post-LN, learned positions, token types, BERT's vocab padded.
    "bert_base": dict(
        family="encoder", num_layers=12, d_model=768, num_heads=12, mlp_dim=3072, max_seq_len=512, vocab_size=30528,
        norm="layernorm", norm_eps=1e-12, positions="learned", mlp="gelu_exact", tie_embeddings=True,
        type_vocab_size=2, norm_position="post", use_bias=True, dtype="bfloat16", **{"train.seq_len": 512},
    ),
    # ---- encoder-decoders (T5 v1.1): span corruption (objective span_corruption) ----
    "t5_mini": dict(
        family="encoder_decoder", num_layers=4, num_decoder_layers=4, d_model=128, num_heads=4, mlp_dim=384,
        max_seq_len=256, norm="rmsnorm", positions="relative", mlp="geglu", tie_embeddings=False,
        scan_layers=False, **{"train.seq_len": 128},
    ),
    # T5 v1.1 base shape (~250M): 12 + 12 layers, width 768, gated GELU 2048, relative positions, untied head.
    "t5_base": dict(
        family="encoder_decoder", num_layers=12, num_decoder_layers=12, d_model=768, num_heads=12, head_dim=64,
        mlp_dim=2048, max_seq_len=512, vocab_size=32128, norm="rmsnorm", positions="relative", mlp="geglu",
        tie_embeddings=False, dtype="bfloat16", **{"train.seq_len": 512},
    ),
}
