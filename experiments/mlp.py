"""SwiGLU vs GELU feed-forward blocks at the same parameter count, in the tiny model.

SwiGLU has three d_model x mlp_dim matrices and GELU two, so GELU gets mlp_dim 576 (= 1.5 x 384) to match the
tiny preset's SwiGLU with 384: the comparison is per parameter, not per hidden unit.

    llm-jax sweep run experiments/mlp.py && llm-jax sweep report experiments/mlp.py
"""

from llm_jax.sweep import Experiment

EXPERIMENT = Experiment(
    description="SwiGLU (gated, 3 matrices, mlp_dim 384) against GELU (2 matrices, mlp_dim 576): equal parameters.",
    config="configs/train.py:model=tiny,topology=cpu",
    base={"train.steps": 200, "train.eval_every": 40, "train.log_every": 20, "checkpoint.every_steps": 50,
          "optimizer.warmup_steps": 20, "sample.max_new_tokens": 100},
    variants=[
        ("swiglu", {"model.mlp": "swiglu", "model.mlp_dim": 384}),
        ("gelu", {"model.mlp": "gelu", "model.mlp_dim": 576}),
    ],
    seeds=(0, 1),
)
