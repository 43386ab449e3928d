"""An experiment: one file in `experiments/` that declares a base config, the variants to compare and the seeds.

    from llm_jax.sweep import Experiment

    EXPERIMENT = Experiment(
        config="configs/train.py:model=tiny,topology=cpu",   # as for --config, relative to the repository root
        base={"train.steps": 300, "train.eval_every": 50},   # overrides shared by every variant
        variants=[("rmsnorm", {"model.norm": "rmsnorm"}), ("layernorm", {"model.norm": "layernorm"})],
        seeds=(0, 1),
    )

`variants` is a list of (name, overrides) pairs, not a dict, so that a name given twice is caught instead of the
first one silently disappearing. `grid={"optimizer.lr": [1e-3, 3e-3]}` adds one variant per combination, named
from the keys' last parts ("lr=0.001"). Each (variant, seed) is one run in `<root>/<experiment>/<variant>/seed_<n>`.
`load_experiment` checks everything a run would trip over later — unknown keys, values of the wrong type, duplicate
or identical variants, an empty grid — before any run starts.
"""

import dataclasses
import itertools
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from llm_jax.config.load import ConfigError, load_config, load_module, set_key
from llm_jax.config.validate import finalize, validate

# Tags an experiment can compare; each is a scalar the train loop writes to TensorBoard.
METRICS = ("eval/loss", "eval/perplexity", "eval/bpb", "eval/accuracy", "train/loss")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=,+-]*")  # variant names are directory names


class ExperimentError(ConfigError):
    """A bad experiment definition; the message names the file, the variant and the key."""


@dataclasses.dataclass(frozen=True)
class Experiment:
    config: str  # a --config spec: path.py[:presets]
    variants: Sequence[tuple[str, Mapping[str, Any]]] = ()
    grid: Mapping[str, Sequence[Any]] | None = None
    base: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    seeds: Sequence[int] = (0,)
    metrics: Sequence[str] = ("eval/loss",)  # compared in the report; the first one is the headline
    description: str = ""


@dataclasses.dataclass(frozen=True)
class Run:
    variant: str
    seed: int
    overrides: dict[str, Any]  # base, then the variant's, then train.seed, then the command line's
    config: ml_collections.ConfigDict
    workdir: pathlib.Path

    @property
    def name(self) -> str:
        return f"{self.variant}/seed_{self.seed}"


@dataclasses.dataclass(frozen=True)
class Sweep:
    name: str  # the file's stem
    path: pathlib.Path
    spec: Experiment
    variants: dict[str, dict[str, Any]]  # name -> its own overrides, in definition order
    runs: list[Run]
    directory: pathlib.Path  # <root>/<name>: one TensorBoard logdir for every run


def _value_name(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def expand_grid(grid: Mapping[str, Sequence[Any]], where: str) -> list[tuple[str, dict[str, Any]]]:
    """{'optimizer.lr': [1e-3, 3e-3]} -> [('lr=0.001', {...}), ('lr=0.003', {...})]; every combination."""
    if not isinstance(grid, Mapping) or not grid:
        raise ExperimentError(f"{where}: grid is empty; give it at least one key with values, e.g. "
                              "grid={'optimizer.lr': [1e-3, 3e-3]}, or leave it out")
    for key, values in grid.items():
        if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
            raise ExperimentError(f"{where}: grid key '{key}' has no list of values ({values!r}); give it a "
                                  "non-empty list, e.g. [1e-3, 3e-3]")
    short = [key.rpartition(".")[2] for key in grid]
    if len(set(short)) < len(short):  # two keys ending alike (model.dtype, data.dtype): name them in full
        short = list(grid)
    return [(",".join(f"{s}={_value_name(v)}" for s, v in zip(short, combo, strict=True)), dict(zip(grid, combo,
            strict=True))) for combo in itertools.product(*grid.values())]


def _variants(spec: Experiment, where: str) -> dict[str, dict[str, Any]]:
    if isinstance(spec.variants, Mapping):
        raise ExperimentError(f"{where}: variants must be a list of (name, overrides) pairs, not a dict (a dict "
                              "keeps only the last of two entries with the same name)")
    pairs = list(spec.variants) + (expand_grid(spec.grid, where) if spec.grid is not None else [])
    if not pairs:
        raise ExperimentError(f"{where}: no variants; give variants=[(name, overrides), ...] or a grid")
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        if not (isinstance(pair, tuple | list) and len(pair) == 2 and isinstance(pair[1], Mapping)):
            raise ExperimentError(f"{where}: variant {pair!r} is not a (name, {{'a.b': value}}) pair")
        name, overrides = pair
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise ExperimentError(f"{where}: variant name {name!r} must be a directory name: letters, digits and "
                                  "_ . = , + - (no spaces or slashes)")
        if name in out:
            raise ExperimentError(f"{where}: variant name '{name}' is used twice; give each variant its own name")
        if "train.seed" in overrides:
            raise ExperimentError(f"{where}: variant '{name}' sets train.seed; list the seeds in seeds=(...) instead")
        out[name] = dict(overrides)
    return out


def _run_config(spec: Experiment, overrides: Mapping[str, Any], where: str) -> ml_collections.ConfigDict:
    cfg = load_config(spec.config)
    for key, value in overrides.items():
        try:
            set_key(cfg, key, value, where)
        except ConfigError as e:
            raise ExperimentError(str(e)) from None
    # What can be checked without devices or a tokenizer: choices, ranges, shapes. The mesh is checked by the run.
    probe = finalize(cfg, tokenizer_vocab=1)
    for axis in ("data", "fsdp", "tensor", "dcn_data", "dcn_fsdp", "dcn_tensor"):
        probe.mesh[axis] = 1
    try:
        validate(probe, num_devices=1)
    except ConfigError as e:
        raise ExperimentError(f"{where}: {e}") from None
    return cfg


def load_experiment(path: str | pathlib.Path, root: str | pathlib.Path = "runs",
                    cli_overrides: Sequence[str] = ()) -> Sweep:
    """Read and check an experiment file; `cli_overrides` ('a.b=value') apply to every run, after the file's."""
    path = pathlib.Path(path)
    module = load_module(path, "experiment file")
    spec = getattr(module, "EXPERIMENT", None)
    if not isinstance(spec, Experiment):
        raise ExperimentError(f"experiment file '{path}' defines no EXPERIMENT = Experiment(...) (see "
                              "llm_jax/sweep/experiment.py)")
    where = f"experiment '{path}'"
    seeds = list(spec.seeds)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ExperimentError(f"{where}: seeds={spec.seeds!r} must be a non-empty list of integers >= 0")
    if len(set(seeds)) < len(seeds):
        raise ExperimentError(f"{where}: seeds={spec.seeds!r} lists a seed twice")
    unknown = [m for m in spec.metrics if m not in METRICS]
    if not spec.metrics or unknown:
        raise ExperimentError(f"{where}: metrics={spec.metrics!r}: {unknown or 'none given'}; choose from "
                              f"{', '.join(METRICS)}")
    if "train.seed" in spec.base:
        raise ExperimentError(f"{where}: base sets train.seed; list the seeds in seeds=(...) instead")
    cli = {}
    for item in cli_overrides:
        key, eq, value = item.partition("=")
        if not eq:
            raise ExperimentError(f"override '--config.{item}' has no value; write --config.{key}=VALUE")
        cli[key] = value
    variants = _variants(spec, where)
    directory = pathlib.Path(root) / path.stem
    runs, seen = [], {}
    for name, own in variants.items():
        for seed in seeds:
            run_overrides = {**spec.base, **own, "train.seed": seed, **cli}
            cfg = _run_config(spec, run_overrides, f"{where}, variant '{name}', seed {seed}")
            runs.append(Run(name, seed, run_overrides, cfg, directory / name / f"seed_{seed}"))
        # Every variant's first run has the same seed and command-line overrides: equal configs mean equal variants.
        key = runs[-len(seeds)].config.to_json_best_effort(sort_keys=True)
        if key in seen:
            raise ExperimentError(f"{where}: variants '{seen[key]}' and '{name}' give the same config; change one "
                                  "or drop it")
        seen[key] = name
    return Sweep(path.stem, path, spec, variants, runs, directory)


def select(sweep: Sweep, only: Sequence[str]) -> list[Run]:
    """The runs of the variants named in `only` (all when empty); an unknown name is an error."""
    unknown = [v for v in only if v not in sweep.variants]
    if unknown:
        raise ExperimentError(f"--only: no variant {', '.join(map(repr, unknown))} in {sweep.path}; its variants "
                              f"are: {', '.join(sweep.variants)}")
    return [r for r in sweep.runs if not only or r.variant in only]
