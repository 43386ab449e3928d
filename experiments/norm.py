"""RMSNorm vs LayerNorm in the tiny character-level model (everything else as the `tiny` preset).

    llm-jax sweep run experiments/norm.py && llm-jax sweep report experiments/norm.py
"""

from llm_jax.sweep import Experiment

EXPERIMENT = Experiment(
    description="Does the normalisation layer matter for a small pre-norm model? RMSNorm (scale only) against "
                "LayerNorm (mean-centred, scale and bias); same width, depth, data and schedule.",
    config="configs/train.py:model=tiny,topology=cpu",
    base={"train.steps": 200, "train.eval_every": 40, "train.log_every": 20, "checkpoint.every_steps": 50,
          "optimizer.warmup_steps": 20, "sample.max_new_tokens": 100},
    variants=[
        ("rmsnorm", {"model.norm": "rmsnorm"}),
        ("layernorm", {"model.norm": "layernorm"}),
    ],
    seeds=(0, 1),
    metrics=("eval/loss", "eval/bpb"),
)
