"""`llm-jax bench --hf`: how long `hf export`, `hf import` and loading a Hugging Face directory take for the
config's model, and the peak host memory (resident set) of each, measured in a child process of its own.

The weights are random, written once as an llm_jax parameter file in `--hf-dtype` (bfloat16: as published
checkpoints are); the import's output is checked to be bitwise the file exported.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from llm_jax.checkpoint import safetensors
from llm_jax.checkpoint.params import portable
from llm_jax.train.setup import prepare
from llm_jax.train.state import abstract_params

GIB = 2**30


def _random_file(cfg: ml_collections.ConfigDict, path: pathlib.Path, dtype: str) -> tuple[ml_collections.ConfigDict,
                                                                                           int]:
    """The config's model with random weights (one array at a time, in `dtype`) as an llm_jax parameter file."""
    cfg, _, model, tokenizer, _, objective = prepare(cfg, check_data=False, fit_copies=0)
    abstract = nn.unbox(abstract_params(model, objective.spec()))
    rng = np.random.default_rng(0)
    tensors = portable(jax.tree.map(lambda a: (rng.standard_normal(a.shape, np.float32) * 0.02).astype(dtype),
                                    abstract))
    safetensors.write(path, tensors, {"format": "llm_jax", "step": "", "config": cfg.to_json_best_effort(),
                                      "tokenizer": json.dumps(tokenizer.identity())})
    return cfg, sum(a.size for a in tensors.values())


def _measured(args: list[str]) -> tuple[float, float]:
    """(seconds, peak resident GiB) of a child process running `args`; its failure ends the benchmark."""
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: a chatty child never blocks on a full pipe
        start = time.perf_counter()
        child = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            log.seek(0)
            raise SystemExit(f"{' '.join(args[:4])} ... failed (exit {child.returncode}):\n{log.read()[-3000:]}")
    return seconds, usage.ru_maxrss * 1024 / GIB  # Linux reports kilobytes


LOAD = ("import sys; from llm_jax.train.inference import load_trained; "
        "load_trained(sys.argv[1], check_data=False, overrides=['runtime.num_cpu_devices=0'])")


def bench_hf(cfg: ml_collections.ConfigDict, where: str | None, dtype: str = "bfloat16") -> dict:
    directory = pathlib.Path(tempfile.mkdtemp(prefix="llm_jax_hf_bench_", dir=where))
    try:
        source = directory / "model.safetensors"
        cfg, count = _random_file(cfg, source, dtype)
        size = source.stat().st_size / GIB
        print(f"model: {cfg.model_preset or 'from the config'}, {count:,} parameters, {size:.2f} GiB in {dtype}")
        cli = [sys.executable, "-m", "llm_jax"]
        rows = {
            "hf export": _measured([*cli, "hf", "export", f"--workdir={source}", f"--out={directory / 'hf'}"]),
            "hf import": _measured([*cli, "hf", "import", f"--from={directory / 'hf'}",
                                    f"--out={directory / 'back.safetensors'}"]),
            "load from the directory": _measured([sys.executable, "-c", LOAD, str(directory / "hf")]),
        }
        with safetensors.opened(source) as (names, read, _), safetensors.opened(directory / "back.safetensors") as (
                back_names, read_back, _):
            same = sorted(names) == sorted(back_names) and all(
                read(n).tobytes() == read_back(n).tobytes() for n in names)
        for what, (seconds, peak) in rows.items():
            print(f"  {what:<24} {seconds:7.1f} s   peak host memory {peak:6.2f} GiB ({peak / size:.1f}x the file)")
        print(f"  export -> import round trip bitwise: {same}")
        result = {"parameters": count, "file_gib": size, "bitwise": same,
                  **{k.replace(" ", "_"): {"s": s, "peak_gib": p} for k, (s, p) in rows.items()}}
        print(json.dumps(result))
        return result
    finally:
        shutil.rmtree(directory, ignore_errors=True)
