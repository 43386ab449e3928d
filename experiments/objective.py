"""Causal LM vs prefix LM vs span corruption at equal training tokens, in the tiny shape.

    llm-jax sweep run experiments/objective.py && llm-jax sweep report experiments/objective.py

Every variant reads the same packed rows (train.global_batch x train.seq_len tokens per step, the same steps).
Causal and prefix LM train the 4-layer decoder; span corruption trains a 2 + 2 layer encoder-decoder of about the
same size. The objectives score different targets (every next token; the tokens after a random prefix; the
dropped spans and their sentinels), so their losses measure different tasks: read each curve against its own
unigram baseline in the run's log rather than against each other.
"""

from llm_jax.sweep import Experiment

EXPERIMENT = Experiment(
    description="Objectives at equal training tokens: causal LM, prefix LM (bidirectional prefix, scored after it) "
                "and T5 span corruption (15% noise, mean span 3) on a 2+2 layer encoder-decoder.",
    config="configs/train.py:model=tiny,topology=cpu",
    base={"train.steps": 200, "train.eval_every": 50, "train.log_every": 20, "checkpoint.every_steps": 100,
          "optimizer.warmup_steps": 20, "sample.max_new_tokens": 60},
    variants=[
        ("causal_lm", {"objective.name": "causal_lm"}),
        ("prefix_lm", {"objective.name": "prefix_lm"}),
        ("span_corruption", {"model.family": "encoder_decoder", "objective.name": "span_corruption",
                             "model.num_layers": 2, "model.num_decoder_layers": 2, "model.positions": "relative",
                             "model.mlp": "geglu", "model.tie_embeddings": False}),
    ],
    metrics=("eval/loss", "eval/accuracy"),
    seeds=(0,),
)
