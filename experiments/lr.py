"""A learning-rate sweep for the tiny model: peak AdamW learning rate on a log grid, cosine schedule.

    llm-jax sweep run experiments/lr.py && llm-jax sweep report experiments/lr.py
"""

from llm_jax.sweep import Experiment

EXPERIMENT = Experiment(
    description="Peak learning rate from 5e-4 to 8e-3 (factor 2 apart), warmup 20 steps, cosine to 10%.",
    config="configs/train.py:model=tiny,topology=cpu",
    base={"train.steps": 200, "train.eval_every": 40, "train.log_every": 20, "checkpoint.every_steps": 50,
          "optimizer.warmup_steps": 20, "sample.max_new_tokens": 100},
    grid={"optimizer.lr": [5e-4, 1e-3, 2e-3, 4e-3, 8e-3]},
    seeds=(0,),
)
