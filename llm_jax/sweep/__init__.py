"""Ablation experiments: definitions (`experiments/*.py`), the sweep runner and the comparison report."""

from llm_jax.sweep.experiment import Experiment, ExperimentError, load_experiment

__all__ = ["Experiment", "ExperimentError", "load_experiment"]
