"""`llm-jax <command> [flags]`. Config flags follow ml_collections: --config=FILE[:ARG] --config.a.b=VALUE."""

import argparse
import sys

from llm_jax.config import ConfigError, load_config

COMMANDS = {
    "train": "train a model: llm-jax train --config=configs/train.py:model=tiny,topology=cpu --workdir=runs/x",
    "bench": "time the train step, print tokens/s and MFU: llm-jax bench --config=configs/train.py:model=nano",
}


def _split_config_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate `--config.a.b=v` overrides from the other flags."""
    overrides, rest = [], []
    for a in argv:
        (overrides if a.startswith("--config.") else rest).append(a)
    return [o[len("--config."):] for o in overrides], rest


def _train(argv: list[str]) -> int:
    overrides, rest = _split_config_args(argv)
    parser = argparse.ArgumentParser(prog="llm-jax train", description=COMMANDS["train"])
    parser.add_argument("--config", default="configs/train.py", help="config file, optionally with :ARG presets")
    parser.add_argument("--workdir", required=True, help="where metrics, TensorBoard events and samples go")
    args = parser.parse_args(rest)

    from llm_jax.parallel.runtime import init_runtime
    from llm_jax.train import loop

    cfg = load_config(args.config, overrides)
    init_runtime(cfg)
    try:
        loop.train(cfg, args.workdir)
    except loop.DivergedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _bench(argv: list[str]) -> int:
    overrides, rest = _split_config_args(argv)
    parser = argparse.ArgumentParser(prog="llm-jax bench", description=COMMANDS["bench"])
    parser.add_argument("--config", default="configs/train.py", help="config file, optionally with :ARG presets")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    args = parser.parse_args(rest)

    from llm_jax.parallel.runtime import init_runtime
    from llm_jax.train.bench import bench

    cfg = load_config(args.config, overrides)
    init_runtime(cfg)
    bench(cfg, steps=args.steps, warmup=args.warmup)
    return 0


HANDLERS = {"train": _train, "bench": _bench}


def _usage() -> str:
    lines = ["usage: llm-jax <command> [flags]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, help_ in COMMANDS.items()]
    lines += ["", "Run 'llm-jax <command> --help' for a command's flags."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in HANDLERS:
        print(f"error: unknown command '{command}'\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        return HANDLERS[command](rest)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
