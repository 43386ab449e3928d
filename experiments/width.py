"""Width scaling: the tiny model at d_model 64, 128 and 256 (heads of 32 dimensions, SwiGLU mlp_dim 3 x d_model),
same depth, data and learning rate. Loss against tokens shows how much each doubling of width buys.

    llm-jax sweep run experiments/width.py && llm-jax sweep report experiments/width.py
"""

from llm_jax.sweep import Experiment

EXPERIMENT = Experiment(
    description="d_model 64 / 128 / 256 at 4 layers; parameters grow about 4x per doubling of the width.",
    config="configs/train.py:model=tiny,topology=cpu",
    base={"train.steps": 200, "train.eval_every": 40, "train.log_every": 20, "checkpoint.every_steps": 50,
          "optimizer.warmup_steps": 20, "sample.max_new_tokens": 100},
    variants=[
        ("d64", {"model.d_model": 64, "model.num_heads": 2, "model.mlp_dim": 192}),
        ("d128", {"model.d_model": 128, "model.num_heads": 4, "model.mlp_dim": 384}),
        ("d256", {"model.d_model": 256, "model.num_heads": 8, "model.mlp_dim": 768}),
    ],
    seeds=(0,),
)
