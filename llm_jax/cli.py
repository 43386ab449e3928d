"""`llm-jax <command> [flags]`. Config flags follow ml_collections: --config=FILE[:ARG] --config.a.b=VALUE."""

import sys

from llm_jax.cli_parse import COMMANDS, Parser, UsageError, config_parser, parse_with_config, split_config_flags
from llm_jax.cli_trained import eval_command, export_command, hf_command, sample_command
from llm_jax.config import ConfigError, load_config
from llm_jax.config.validate import check_keys
from llm_jax.data.sources import DataError
from llm_jax.malloc import keep_freed_memory


def _train(argv: list[str]) -> int:
    parser = config_parser("train")
    parser.add_argument("--workdir", required=True, help="where metrics, TensorBoard events and samples go")
    args, cfg = parse_with_config(parser, argv)

    from llm_jax.checkpoint.manager import CheckpointError
    from llm_jax.train import loop
    from llm_jax.train.resume import ResumeRefusedError

    try:
        loop.train(cfg, args.workdir)
    except loop.DivergedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ResumeRefusedError as e:  # nothing ran and nothing on disk changed: the command line is what is wrong
        print(f"checkpoint error: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:
        print(f"checkpoint error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk or a lost mount while writing logs: orbax's own writes are CheckpointErrors
        print(f"error: writing {e.filename or 'the run files'} failed ({e.strerror or e}); the complete checkpoints "
              f"in {args.workdir}/checkpoints are kept: free space or fix the directory, then run the same command "
              "again to resume", file=sys.stderr)
        return 1
    return 0


def _bench(argv: list[str]) -> int:
    parser = config_parser("bench")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    parser.add_argument("--profile", action="store_true",
                        help="also trace 3 steps and print their time by kind of op (matmuls, transposes/copies, "
                             "elementwise, collectives) and the slowest ops")
    parser.add_argument("--checkpoint", action="store_true",
                        help="time checkpoint save/restore instead of the train step (--steps steps per phase)")
    parser.add_argument("--hf", action="store_true",
                        help="time hf export, hf import and loading a Hugging Face directory of the config's model "
                             "(random weights), with each one's peak host memory")
    parser.add_argument("--hf-dtype", default="bfloat16", choices=("float32", "bfloat16"),
                        help="with --hf: the weights' dtype on disk")
    parser.add_argument("--dir", default=None,
                        help="with --checkpoint or --hf: where to write (a temporary directory inside it, deleted "
                             "after); default: the system's temporary directory")
    args, cfg = parse_with_config(parser, argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps must be at least 1 and --warmup at least 0 (got {args.steps} and {args.warmup})")

    if args.hf:
        from llm_jax.hf.bench import bench_hf

        bench_hf(cfg, args.dir, args.hf_dtype)
        return 0

    if args.checkpoint:
        from llm_jax.train.checkpoint_bench import bench_checkpoint

        bench_checkpoint(cfg, args.dir, steps=args.steps)
        return 0
    from llm_jax.train.bench import bench

    bench(cfg, steps=args.steps, warmup=args.warmup, profile=args.profile)
    return 0


def _tokenizer(argv: list[str]) -> int:
    parser = Parser(prog="llm-jax tokenizer", description=COMMANDS["tokenizer"])
    sub = parser.add_subparsers(dest="action", required=True)
    train = sub.add_parser("train", help="train a SentencePiece model (byte fallback, <pad> <bos> <eos> = 0 1 2)")
    train.add_argument("--input", required=True, action="append",
                       help="text, .jsonl, .parquet or .arrayrecord files or globs, comma-separated or repeated")
    train.add_argument("--vocab-size", type=int, required=True)
    train.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe")
    train.add_argument("--out", required=True, help="directory for tokenizer.model and tokenizer.json")
    train.add_argument("--text-field", default="text", help="the JSONL field / Parquet column holding the text")
    for name in ("encode", "decode"):
        p = sub.add_parser(name, help=f"{name} with a tokenizer")
        p.add_argument("--tokenizer", default="byte", help="'byte' or the path of a tokenizer.model")
        p.add_argument("text", help="text to encode, or space-separated ids to decode")
    args = parser.parse_args(argv)

    from llm_jax.data import tokenizer as tok

    if args.action == "train":
        from llm_jax.data.tokenizer_train import train_sentencepiece

        try:
            model = train_sentencepiece(args.input, args.vocab_size, args.model_type, args.out, args.text_field)
        except ValueError as e:  # bad input files (DataError) or bad --vocab-size
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {model.model_path} ({model.vocab_size} tokens, hash {model.identity()['hash']}); train with "
              f"--config.data.tokenizer=sentencepiece --config.data.tokenizer_path={model.model_path}")
        return 0
    tokenizer = tok.make_tokenizer("byte") if args.tokenizer == "byte" else tok.make_tokenizer(
        "sentencepiece", args.tokenizer)
    if args.action == "encode":
        print(" ".join(str(i) for i in tokenizer.encode(args.text)))
    else:
        print(tokenizer.decode([int(i) for i in args.text.split()]))
    return 0


def _data(argv: list[str]) -> int:
    actions = {"prepare": "tokenize and pack the configured corpus once into ArrayRecord shards; train from them "
                          "with --config.data.corpus=prepared --config.data.prepared_dir=OUT",
               "bench": "print the tokens/s that the input pipeline alone produces",
               "stats": "tokens, documents, length histogram and packing of a prepared directory, and the epochs "
                        "of each source that the configured run (train.steps, data.weights) would read"}
    if argv and argv[0] in ("-h", "--help"):
        print("usage: llm-jax data {prepare,bench,stats} --config=... [flags]\n\n" +
              "\n".join(f"  {k:<8} {v}" for k, v in actions.items()))
        return 0
    if not argv or argv[0] not in actions:
        got = f"unknown action '{argv[0]}'" if argv else "no action given"
        raise UsageError(f"llm-jax data: {got}; choose prepare, bench or stats (see llm-jax data --help)")
    action, argv = argv[0], argv[1:]
    parser = config_parser(f"data {action}", actions[action])
    if action == "prepare":
        parser.add_argument("--out", required=True, help="directory for the shards and meta.json")
        parser.add_argument("--rows-per-shard", type=int, default=65536)
    elif action == "stats":
        parser.add_argument("directory", help="a directory written by `llm-jax data prepare`")
    else:
        parser.add_argument("--batches", type=int, default=200, help="timed batches")
    args, cfg = parse_with_config(parser, argv)
    if action == "stats":
        from llm_jax.data.stats import print_stats

        print_stats(args.directory, cfg)
        return 0
    if action == "bench":
        from llm_jax.data.bench import bench_data

        bench_data(cfg, args.batches)
        return 0
    from llm_jax.data.pipeline import check_sources
    from llm_jax.data.prepare import prepare_data

    check_sources(cfg.data)
    meta = prepare_data(cfg, args.out, args.rows_per_shard)
    print(f"wrote {sum(s['rows'] for s in meta['train']):,} train rows ({meta['tokens']:,} tokens, "
          f"{len(meta['train'])} source(s)) and {meta['validation']['rows']:,} validation rows of "
          f"{meta['row_len']} tokens (objective {meta['objective']}) to {args.out} | "
          f"{meta['stats'] or 'no input problems'}\n"
          f"train with --config.data.corpus=prepared --config.data.prepared_dir={args.out} "
          f"--config.train.seq_len={meta['seq_len']} (and an objective that reads rows of {meta['row_len']} tokens)")
    return 0


def _plan(argv: list[str]) -> int:
    from llm_jax.monitor.hardware import KINDS

    parser = config_parser("plan")
    parser.add_argument("--devices", type=int, default=None, help="target device count (default: the topology "
                        "preset's `devices`)")
    parser.add_argument("--processes", type=int, default=None, help="target processes, one per host or GPU node "
                        "(default: the preset's)")
    parser.add_argument("--slices", type=int, default=None, help="TPU slices that mesh.dcn_* axes span "
                        "(default: the preset's)")
    parser.add_argument("--device-kind", choices=KINDS, default=None,
                        help="the accelerator (default: from the topology preset's name)")
    parser.add_argument("--hbm-gib", type=float, default=None, help="device memory in GiB (default: the kind's)")
    flags, overrides = split_config_flags(argv)
    args = parser.parse_args(flags)
    for flag, value, least in (("--devices", args.devices, 1), ("--processes", args.processes, 1),
                               ("--slices", args.slices, 0)):
        if value is not None and value < least:
            parser.error(f"{flag} must be at least {least} (got {value})")
    if args.hbm_gib is not None and not args.hbm_gib > 0:  # `not >` also refuses nan
        parser.error(f"--hbm-gib must be a positive number of GiB (got {args.hbm_gib})")
    # No init_runtime(): the plan runs on this machine's CPU, with as many fake devices as the target has.
    cfg = load_config(args.config, overrides)
    check_keys(cfg)
    from llm_jax.train.plan import run

    run(cfg, args.config.partition(":")[0], args.devices, args.processes, args.slices, args.device_kind,
        args.hbm_gib)
    return 0


def _config(argv: list[str]) -> int:
    from llm_jax.config.base import KEYS
    from llm_jax.config.load import get_key

    flags, overrides = split_config_flags(argv)
    args = config_parser("config").parse_args(flags)
    cfg = load_config(args.config, overrides)
    check_keys(cfg)
    for name, declared in KEYS.items():
        allowed = f"; allowed: {declared.allowed()}" if declared.numeric or declared.choices else ""
        print(f"{name} = {get_key(cfg, name)!r}  # {declared.help}{allowed}")
    return 0


def _sweep(argv: list[str]) -> int:
    parser = Parser(prog="llm-jax sweep", description=COMMANDS["sweep"],
                    epilog="`run` also takes --config.a.b=VALUE overrides for every run.")
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="train every (variant, seed) not finished yet; resume the interrupted ones")
    report = sub.add_parser("report", help="write report.md (a table) and PNG plots into the experiment directory")
    for p in (run, report):
        p.add_argument("experiment", help="an experiment file, e.g. experiments/norm.py")
        p.add_argument("--root", default="runs", help="runs go to ROOT/<experiment>/<variant>/seed_<n>")
    run.add_argument("--only", action="append", default=[],
                     help="only these variants (repeat, or separate with commas)")
    run.add_argument("--launcher", choices=("local", "slurm", "print"), default="local",
                     help="local: one run after another here (launch/local.sh); slurm: one job per run "
                          "(launch/slurm.sbatch); print: print each run's llm-jax train command")
    run.add_argument("--resubmit", action="store_true",
                     help="submit runs again even if SLURM may still have their jobs")
    flags, overrides = split_config_flags(argv)
    args = parser.parse_args(flags)
    if args.action == "report" and overrides:
        parser.error("report takes no --config.* overrides: it reads what the runs wrote")

    from llm_jax.sweep import ExperimentError, load_experiment

    try:
        sweep = load_experiment(args.experiment, args.root, overrides)
        if args.action == "report":
            from llm_jax.sweep.report import write_report

            path, plots, table = write_report(sweep)
            print(f"{table}\n\nwrote {path} and {', '.join(map(str, plots))}")
            return 0
        from llm_jax.sweep.experiment import select
        from llm_jax.sweep.runner import run_sweep

        # A grid variant's own name has commas ("lr=0.001,b2=0.99"); other values are comma-separated lists.
        only = [v for item in args.only for v in ([item] if item in sweep.variants else item.split(",")) if v]
        return run_sweep(sweep, select(sweep, only), args.launcher, args.resubmit)
    except ExperimentError as e:
        print(f"experiment error: {e}", file=sys.stderr)
        return 2


HANDLERS = {"train": _train, "tokenizer": _tokenizer, "bench": _bench, "data": _data, "export": export_command,
            "eval": eval_command, "sample": sample_command, "plan": _plan, "config": _config,
            "sweep": _sweep, "hf": hf_command}


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
    keep_freed_memory()  # before JAX allocates anything
    if command not in HANDLERS:
        print(f"error: unknown command '{command}'; choose one of {', '.join(HANDLERS)} (llm-jax --help)",
              file=sys.stderr)
        return 2
    try:
        return HANDLERS[command](rest)
    except UsageError as e:
        print(e, file=sys.stderr)
        return 2
    except Exception as e:  # bad input ends with one line and exit 2; anything else is a bug: its traceback shows
        label = _bad_input(e)
        if label is None:
            raise
        print(f"{label}{' '.join(str(e).split())}", file=sys.stderr)
        return 2


def _bad_input(e: Exception) -> str | None:
    """The prefix of the one-line message for an error that bad input (flags, config, files) causes; None else."""
    from llm_jax.checkpoint.params import CheckpointError
    from llm_jax.hf.importer import HFError

    for kind, label in ((ConfigError, "config error: "), (DataError, "data error: "),
                        (CheckpointError, "checkpoint error: "), (HFError, "error: ")):
        if isinstance(e, kind):
            return label
    if isinstance(e, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
        return "error: "
    return None


if __name__ == "__main__":
    sys.exit(main())
