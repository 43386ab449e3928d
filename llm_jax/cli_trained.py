"""The commands that read a trained model: export, eval, sample."""

import argparse
import json
import pathlib
import sys
import time

from llm_jax.cli_parse import COMMANDS, Parser, split_config_flags
from llm_jax.models.layout import on_mesh


def export_command(argv: list[str]) -> int:
    parser = Parser(prog="llm-jax export", description=COMMANDS["export"],
                    epilog="Names: embedding, layers.<i>.attn.wq, ..., final_norm.scale (README).")
    parser.add_argument("--workdir", required=True, help="the run's workdir (or a checkpoints/<step> directory)")
    parser.add_argument("--out", required=True, help="the .safetensors file to write")
    parser.add_argument("--step", type=int, default=None, help="the checkpoint's step (default: the latest)")
    parser.add_argument("--dtype", default="", choices=("", "float32", "bfloat16", "float16"),
                        help="cast the parameters (default: as saved)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing .safetensors file at --out")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    if out.suffix != ".safetensors":
        parser.error(f"--out={out} must end in .safetensors")
    if out.is_file() and not args.overwrite:  # never replace a file the user did not ask to replace
        parser.error(f"--out={out} exists; pass --overwrite to replace it, or give another name")

    from llm_jax.checkpoint.export import export
    from llm_jax.checkpoint.params import CheckpointError

    try:
        step_dir, tensors = export(args.workdir, args.out, args.step, args.dtype)
    except CheckpointError as e:
        print(f"checkpoint error: {e}", file=sys.stderr)
        return 2
    size = sum(t.nbytes for t in tensors.values())
    print(f"wrote {len(tensors)} tensors ({sum(t.size for t in tensors.values()):,} parameters, {size / 2**20:.1f} "
          f"MiB) from {step_dir} to {args.out}")
    return 0


def hf_command(argv: list[str]) -> int:
    """`llm-jax hf import --from=DIR --out=FILE.safetensors` and `llm-jax hf export --workdir=W --out=DIR`."""
    parser = Parser(prog="llm-jax hf", description=COMMANDS["hf"])
    sub = parser.add_subparsers(dest="action", required=True)
    imp = sub.add_parser("import", help="a local Hugging Face model directory -> an llm_jax parameter file")
    imp.add_argument("--from", dest="source", required=True, help="the directory (config.json + safetensors)")
    imp.add_argument("--out", required=True, help="the .safetensors file to write")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing file at --out")
    exp = sub.add_parser("export", help="an llm_jax model -> a Hugging Face directory (config, weights, tokenizer)")
    exp.add_argument("--workdir", required=True,
                     help="a run's workdir, a checkpoints/<step> directory, or a .safetensors parameter file")
    exp.add_argument("--out", required=True, help="the directory to write (must not exist, unless --overwrite)")
    exp.add_argument("--step", type=int, default=None, help="the checkpoint's step (default: the latest)")
    exp.add_argument("--dtype", default="", choices=("", "float32", "bfloat16", "float16"),
                     help="cast the weights (default: as saved)")
    exp.add_argument("--max-shard-mb", type=float, default=5 * 1024,
                     help="split model.safetensors into shards of at most this size (default 5 GiB, as transformers)")
    exp.add_argument("--tokenizer-path", default="", help="the tokenizer's file, if it moved since training")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing directory at --out")
    args = parser.parse_args(argv)
    try:
        return _hf_import(parser, args) if args.action == "import" else _hf_export(parser, args)
    except KeyboardInterrupt:  # the writes are atomic: nothing half-written is left at --out
        print(f"interrupted: nothing was written at {args.out}", file=sys.stderr)
        return 130


def _hf_import(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    out = pathlib.Path(args.out)
    if out.suffix != ".safetensors":
        parser.error(f"--out={out} must end in .safetensors")
    if out.is_file() and not args.overwrite:
        parser.error(f"--out={out} exists; pass --overwrite to replace it, or give another name")

    from llm_jax.hf.importer import HFError, unused_tensors, write_import

    start = time.perf_counter()
    try:
        keys, count = write_import(args.source, out)
    except HFError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    unused = unused_tensors(args.source)
    if unused:
        print(f"note: {len(unused)} tensors of {args.source} are not imported (config.json does not use them, or "
              f"llm_jax has no place for them): {', '.join(unused[:5])}{', ...' if len(unused) > 5 else ''}")
    use = (f"eval with `llm-jax eval --workdir={out}`" if keys["family"] == "encoder" else
           f"sample with `llm-jax sample --workdir={out}`")
    print(f"wrote {out}: {keys['family']} model, {count:,} parameters, in {time.perf_counter() - start:.1f} s | "
          f"{use}; fine-tune with --config=configs/train.py:model={out}")
    return 0


def _hf_export(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if not 0 < args.max_shard_mb < 2**40:  # also refuses nan and inf
        parser.error("--max-shard-mb must be a positive number of MiB")
    from llm_jax.checkpoint.params import CheckpointError
    from llm_jax.hf.exporter import export_hf
    from llm_jax.hf.importer import HFError

    start = time.perf_counter()
    try:
        arch, where, files = export_hf(args.workdir, args.out, args.step, args.dtype, int(args.max_shard_mb * 2**20),
                                       args.overwrite, args.tokenizer_path)
    except (HFError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({arch}) from {where} in {time.perf_counter() - start:.1f} s: {', '.join(files)} | "
          f"load with transformers.AutoModel...from_pretrained({str(args.out)!r})")
    return 0


def trained_parser(command: str) -> argparse.ArgumentParser:
    parser = Parser(prog=f"llm-jax {command}", description=COMMANDS[command],
                    epilog="The model, tokenizer and data keys come from the saved config; the rest (mesh, "
                           "runtime) from the defaults. --config.a.b=VALUE changes any key (e.g. the mesh, or "
                           "data.tokenizer_path if the tokenizer moved).")
    parser.add_argument("--workdir", required=True,
                        help="the run's workdir, a checkpoints/<step> directory, a .safetensors file from export or "
                             "hf import, or a Hugging Face model directory (read tensor by tensor)")
    parser.add_argument("--step", type=int, default=None, help="the checkpoint's step (default: the latest)")
    return parser


def skipped_newer(source: pathlib.Path) -> list[pathlib.Path]:
    """Checkpoint directories newer than `source` (a checkpoints/<step> directory) that were passed over."""
    if not source.name.isdigit():
        return []
    return sorted((p for p in source.parent.iterdir() if p.name.isdigit() and int(p.name) > int(source.name)
                   and (p / "state").is_dir()), key=lambda p: int(p.name))


def load_trained_or_none(args, argv: list[str], check_data: bool):
    from llm_jax.checkpoint.params import CheckpointError
    from llm_jax.train.inference import load_trained

    try:
        trained = load_trained(args.workdir, args.step, split_config_flags(argv)[1], check_data)
    except CheckpointError as e:
        print(f"checkpoint error: {e}", file=sys.stderr)
        return None
    if trained.dropped_keys:
        print(f"note: the saved config has keys this version does not know, ignored: {trained.dropped_keys}")
    skipped = skipped_newer(trained.source) if args.step is None else []
    if skipped:
        print(f"note: newer checkpoints are damaged and were skipped: {', '.join(map(str, skipped))}; using "
              f"{trained.source}")
    return trained


def eval_command(argv: list[str]) -> int:
    parser = trained_parser("eval")
    args = parser.parse_args(split_config_flags(argv)[0])
    trained = load_trained_or_none(args, argv, check_data=True)
    if trained is None:
        return 2
    from llm_jax.train.inference import evaluate_trained

    metrics = evaluate_trained(trained)
    print(f"{trained.source} (step {trained.step}): validation loss {metrics['loss']:.4f} | perplexity "
          f"{metrics['perplexity']:.2f} | {metrics['bpb']:.4f} bits per byte | over {trained.cfg.train.eval_batches} "
          f"batches of {trained.cfg.train.global_batch} x {trained.cfg.train.seq_len} tokens")
    print(json.dumps({"step": trained.step, **metrics}))
    return 0


def sample_command(argv: list[str]) -> int:
    parser = trained_parser("sample")
    parser.add_argument("--prompt", action="append", default=None,
                        help="text to continue; repeat for a batch of prompts (default: the run's sample.prompt)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the run's sample.max_new_tokens")
    parser.add_argument("--temperature", type=float, default=None, help="0: greedy; default: sample.temperature")
    parser.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens; 0: all")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus: keep the tokens that make up top_p")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--num-samples", type=int, default=1, help="continuations of each prompt")
    args = parser.parse_args(split_config_flags(argv)[0])
    for flag, value in (("--max-new-tokens", args.max_new_tokens), ("--top-k", args.top_k),
                        ("--temperature", args.temperature), ("--num-samples", args.num_samples - 1)):
        if value is not None and value < 0:
            parser.error(f"{flag} must be >= {1 if flag == '--num-samples' else 0}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        parser.error("--top-p must be in (0, 1]")
    from llm_jax.checkpoint.params import CheckpointError
    from llm_jax.objectives import make_objective
    from llm_jax.train.hooks import CONTINUATIONS, continue_prompts, first_sentinel
    from llm_jax.train.inference import saved_config

    try:  # the family first, from the config alone: a model that cannot generate is refused before it loads
        family = saved_config(pathlib.Path(args.workdir), args.step)[1].get("model", {}).get("family", "decoder")
    except CheckpointError:
        family = "decoder"  # load_trained names what is wrong
    if family not in CONTINUATIONS:
        print(f"error: {args.workdir} is a model.family={family!r} model, which does not generate text (it fills in "
              "masked tokens; `llm-jax eval` measures it); sample needs a decoder or encoder_decoder model",
              file=sys.stderr)
        return 2
    trained = load_trained_or_none(args, argv, check_data=False)
    if trained is None:
        return 2
    s, tok = trained.cfg.sample, trained.tokenizer
    prompts = [p for p in (args.prompt or [s.prompt]) for _ in range(args.num_samples)]
    pick = lambda flag, default: default if flag is None else flag
    sentinel = first_sentinel(make_objective(trained.cfg, tok))  # where an encoder-decoder writes the continuation
    with on_mesh(trained.mesh, trained.rules):
        outputs = continue_prompts(family, trained.model, trained.params, [tok.encode(p) for p in prompts],
                                   pick(args.max_new_tokens, s.max_new_tokens), trained.cfg.train.seq_len,
                                   sentinel, tok.specials, temperature=pick(args.temperature, s.temperature),
                                   top_k=pick(args.top_k, s.top_k), top_p=pick(args.top_p, s.top_p),
                                   seed=pick(args.seed, s.seed))
    for i, (prompt, new_ids) in enumerate(zip(prompts, outputs, strict=True)):
        print(f"--- sample {i + 1} ---\n{prompt}{tok.decode(new_ids)}")
    return 0
