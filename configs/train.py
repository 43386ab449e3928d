"""The training config: the base config plus a model preset and a topology preset.

    llm-jax train --config=configs/train.py:model=tiny,topology=cpu --config.train.steps=100 --workdir=runs/x
"""

import pathlib

import ml_collections

from llm_jax.config import build_config

HERE = pathlib.Path(__file__).parent


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    return build_config(arg, models_file=HERE / "models.py", topologies_file=HERE / "topologies.py")
