"""Rotary position embeddings vs a learned absolute position table, in the tiny model.

    llm-jax sweep run experiments/positions.py && llm-jax sweep report experiments/positions.py
"""

from llm_jax.sweep import Experiment

EXPERIMENT = Experiment(
    description="RoPE (relative, no parameters) against learned absolute positions (a max_seq_len x d_model table "
                "added to the embeddings).",
    config="configs/train.py:model=tiny,topology=cpu",
    base={"train.steps": 200, "train.eval_every": 40, "train.log_every": 20, "checkpoint.every_steps": 50,
          "optimizer.warmup_steps": 20, "sample.max_new_tokens": 100},
    variants=[
        ("rope", {"model.positions": "rope"}),
        ("learned", {"model.positions": "learned"}),
    ],
    seeds=(0, 1),
)
