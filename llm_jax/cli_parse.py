"""What every `llm-jax` command shares: the command list, a parser whose errors are one line, and the config flags
(--config=FILE[:ARG] --config.a.b=VALUE, as ml_collections has them)."""

import argparse

from llm_jax.config import load_config
from llm_jax.config.validate import check_keys

COMMANDS = {
    "train": "train a model: llm-jax train --config=configs/train.py:model=tiny,topology=cpu --workdir=runs/x",
    "tokenizer": "train a SentencePiece tokenizer, or encode/decode with one: llm-jax tokenizer train --help",
    "bench": "time the train step, print tokens/s and MFU: llm-jax bench --config=configs/train.py:model=nano",
    "eval": "evaluate a saved checkpoint on the run's validation batches: llm-jax eval --workdir=runs/x [--step=N]",
    "sample": "continue prompts with a trained model: llm-jax sample --workdir=runs/x --prompt='ROMEO:'",
    "export": "write a checkpoint's parameters to one .safetensors file: llm-jax export --workdir=runs/x --out=x.st",
    "hf": "Hugging Face models (GPT-2, Llama, BERT, T5) in and out: llm-jax hf import --from=DIR "
          "--out=model.safetensors; llm-jax hf export --workdir=runs/x --out=DIR",
    "data": "prepare a corpus as packed ArrayRecord shards, or time the input pipeline: llm-jax data --help",
    "sweep": "run an ablation experiment's variants and seeds, then compare them: llm-jax sweep run "
             "experiments/norm.py; llm-jax sweep report experiments/norm.py",
    "config": "list every config key: its value in the given config, the values it allows and what it means: "
              "llm-jax config --config=configs/train.py:model=tiny",
    "plan": "will a job fit? compile its train step for the target on CPU, print memory, FLOPs and collectives "
            "per device: llm-jax plan --config=configs/train.py:model=llama3_8b,topology=h100_8",
}


class UsageError(SystemExit):
    """A bad flag: main() prints it as one line (argparse would print the whole usage first). A SystemExit, as
    argparse's own, for callers of parse_args() outside main()."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}; see {self.prog} --help")


def config_parser(command: str, description: str = "") -> argparse.ArgumentParser:
    parser = Parser(prog=f"llm-jax {command}", description=description or COMMANDS[command],
                    epilog="Any config key can be overridden with --config.a.b=VALUE (`llm-jax config` lists them).")
    parser.add_argument("--config", default="configs/train.py", help="config file, optionally with :ARG presets")
    return parser


def split_config_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the command's own flags, the `a.b=value` overrides given as `--config.a.b=value`)."""
    return ([a for a in argv if not a.startswith("--config.")],
            [a[len("--config."):] for a in argv if a.startswith("--config.")])


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str]):
    """Parse the flags, load the config with its `--config.a.b=v` overrides, and set up the JAX runtime."""
    from llm_jax.parallel.runtime import init_runtime

    flags, overrides = split_config_flags(argv)
    args = parser.parse_args(flags)
    cfg = load_config(args.config, overrides)
    check_keys(cfg)  # before init_runtime() reads the runtime.* keys
    init_runtime(cfg)
    return args, cfg
