"""Monitoring read back from disk: TensorBoard tags and values, hparams, text samples, the profile trace, the
console and its log file, the run record; and `llm-jax eval` / `llm-jax sample` on the run's checkpoints.

One small run on a (2, 2, 2) mesh serves every test here (the parameters are sharded three ways).
"""

import contextlib
import io
import json
import math
import os
import pathlib
import re
import subprocess
import time

import ml_collections
import numpy as np
import pytest

from llm_jax import cli
from llm_jax.monitor.events import read_run
from llm_jax.monitor.flops import flops_per_token
from tests.conftest import REPO, small_config

STEPS = 6
TRAIN_TAGS = ("loss", "perplexity", "lr", "grad_norm", "param_norm", "update_norm", "tokens_per_s", "steps_per_s",
              "step_time_s", "data_wait_s", "mfu")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(workdir, Result, what the run printed to a non-terminal stdout)."""
    from llm_jax.train.loop import train

    workdir = tmp_path_factory.mktemp("monitor")
    cfg = small_config()
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 2, 2, 2
    cfg.train.steps, cfg.train.eval_every, cfg.sample.every_steps = STEPS, 3, 3
    cfg.checkpoint.every_steps, cfg.sample.max_new_tokens = 3, 8
    cfg.profile.steps, cfg.profile.start_step = 1, 4
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = train(cfg, workdir)
    return workdir, result, out.getvalue()


def test_every_tag_is_written_with_the_values_the_step_returned(run):
    workdir, result, out = run
    events = read_run(workdir / "tensorboard")
    for tag in TRAIN_TAGS:
        assert f"train/{tag}" in events.scalars, f"train/{tag} missing; tags: {sorted(events.scalars)}"
    for tag in ("eval/loss", "eval/perplexity", "eval/bpb", "system/host_memory_gib", "train/compile_s"):
        assert tag in events.scalars, f"{tag} missing; tags: {sorted(events.scalars)}"

    losses = events.scalars["train/loss"]
    assert sorted(losses) == list(range(1, STEPS + 1))  # log_every=1
    # TensorBoard stores float32: the logged value is the step's loss rounded to float32, exactly.
    assert [losses[s] for s in sorted(losses)] == [float(np.float32(x)) for x in result.train_losses]
    for step, loss in losses.items():
        assert events.scalars["train/perplexity"][step] == pytest.approx(math.exp(loss), rel=1e-5)
    mfu = events.scalars["train/mfu"]
    assert sorted(mfu) == list(range(2, STEPS + 1))  # the first step includes compilation: no throughput
    # MFU = FLOPs per token x tokens/s / the peak the run printed (to 3 digits, so within 1%).
    peak = float(re.search(r"MFU against ([\d.e+-]+) TFLOP/s", out).group(1)) * 1e12
    model = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text())["model"])
    fpt = flops_per_token(model, json.loads((workdir / "config.json").read_text())["train"]["seq_len"])
    for step, v in mfu.items():
        assert v == pytest.approx(fpt * events.scalars["train/tokens_per_s"][step] / peak, rel=0.01), (step, v)
    assert all(v > 0 for v in events.scalars["train/tokens_per_s"].values())
    assert all(v > 0.01 for v in events.scalars["system/host_memory_gib"].values())  # a JAX process is > 10 MiB

    evals = events.scalars["eval/loss"]
    assert sorted(evals) == [3, STEPS] and evals[STEPS] == float(np.float32(result.eval_loss))
    assert events.scalars["eval/perplexity"][STEPS] == pytest.approx(math.exp(result.eval_loss), rel=1e-5)


def test_bits_per_byte_counts_the_bytes_of_the_validation_targets(run):
    """bpb = summed loss / ln 2 / bytes, with the bytes counted here from the batches (byte tokens are 1 byte,
    <eos> and padding none; test_tokenizer checks SentencePiece's byte counts)."""
    from llm_jax.data.pipeline import make_data
    from llm_jax.data.tokenizer import make_tokenizer

    workdir, result, _ = run
    cfg = small_config()
    data = make_data(cfg, make_tokenizer("byte"), 0, 1)
    tokens = nbytes = 0
    for i in range(cfg.train.eval_batches):
        batch = data.eval.batch_at(i)
        targets, mask = np.asarray(batch["targets"]), np.asarray(batch["weights"]) > 0
        tokens += int(mask.sum())
        nbytes += int((mask & (targets >= 3)).sum())
    data.train.close()
    expected = result.eval_metrics["loss"] * tokens / math.log(2) / nbytes
    assert result.eval_metrics["bpb"] == pytest.approx(expected, rel=1e-6)
    assert read_run(workdir / "tensorboard").scalars["eval/bpb"][STEPS] == pytest.approx(expected, rel=1e-6)


def test_the_hparams_tab_lists_the_run_with_its_eval_metrics(run):
    workdir, _, _ = run
    events = read_run(workdir / "tensorboard")
    assert events.hparams["model.d_model"] == 64 and events.hparams["train.steps"] == STEPS
    assert events.hparams["model.norm"] == "rmsnorm" and events.hparams["num_params"] > 0
    assert events.metric_tags == ["eval/loss", "eval/perplexity", "eval/bpb"]
    assert all(tag in events.scalars for tag in events.metric_tags)  # the tab reads them from these scalars
    assert events.finished


def test_text_samples_every_n_steps(run):
    workdir, result, _ = run
    texts = read_run(workdir / "tensorboard").texts["samples/text_summary"]
    assert sorted(texts) == [3, STEPS]
    assert all(t.startswith("ROMEO:") for t in texts.values())
    assert texts[STEPS].replace("  \n", "\n") == result.sample


def test_the_profile_trace_is_written(run):
    workdir, _, printed = run
    traces = list((workdir / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 1000
    assert "profile of steps 4-4 written" in printed


def test_console_output_is_plain_lines_and_the_log_file_has_them(run):
    workdir, _, printed = run
    assert "\r" not in printed and "\x1b" not in printed  # not a terminal: no progress bar
    assert (workdir / "train.log").read_text() == printed
    lines = printed.splitlines()
    assert sum(line.startswith("step ") for line in lines) == STEPS  # log_every=1
    assert any("validation loss" in line and "bits per byte" in line for line in lines)
    assert "compile" in printed and "ms per step" in printed


def test_the_run_record_names_commit_versions_devices_and_mesh(run):
    import jax

    workdir, _, _ = run
    record = json.loads((workdir / "run.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert record["git"]["commit"] == head
    assert record["versions"]["jax"] == jax.__version__ and record["versions"]["flax"]
    assert record["device_count"] == 8 and record["mesh_shape"] == {"data": 2, "fsdp": 2, "tensor": 2}
    assert record["config"]["train"]["steps"] == STEPS


def _cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(list(args))
    return code, out.getvalue()


def test_eval_reproduces_the_losses_logged_at_each_checkpoint(run):
    workdir, result, _ = run
    logged = read_run(workdir / "tensorboard").scalars["eval/loss"]
    mesh = ("--config.mesh.fsdp=2", "--config.mesh.tensor=2")  # the run's mesh: a checkpoint does not set it
    code, out = _cli("eval", f"--workdir={os.path.relpath(workdir)}", *mesh)  # a relative path, as users type them
    assert code == 0, out
    final = json.loads(out.splitlines()[-1])
    assert final["step"] == STEPS and final["loss"] == result.eval_loss  # the same number, evaluated twice
    code, out = _cli("eval", f"--workdir={workdir}", "--step=3", *mesh)
    assert code == 0, out
    assert float(np.float32(json.loads(out.splitlines()[-1])["loss"])) == logged[3]


def test_sample_continues_a_batch_of_prompts_from_the_checkpoint(run):
    workdir, _, _ = run
    code, out = _cli("sample", f"--workdir={workdir}", "--prompt=ROMEO:", "--prompt=To be, or not",
                     "--max-new-tokens=6", "--temperature=0")
    assert code == 0, out
    samples = out.split("--- sample ")[1:]
    assert len(samples) == 2
    texts = [s.split("---\n", 1)[1].rstrip("\n") for s in samples]
    assert texts[0].startswith("ROMEO:") and texts[1].startswith("To be, or not")
    assert all(len(t.encode()) > len(p) for t, p in zip(texts, ("ROMEO:", "To be, or not"), strict=True))


def test_peak_flops_from_the_table_an_override_or_a_timed_matmul():
    import jax

    from llm_jax.monitor.flops import peak_flops, table_peak

    assert table_peak("TPU v5 lite") == 197e12 and table_peak("TPU v5") == 459e12  # v5e before v5p
    assert table_peak("NVIDIA H100 PCIe") == 756e12 and table_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert table_peak("a kind nobody knows") is None
    devices = jax.devices()[:4]
    assert peak_flops(devices, "float32", peak_tflops=2.0) == (8e12, "monitor.peak_tflops")
    measured, source = peak_flops(devices, "float32", cpu_matmul=256)
    assert "timed" in source
    # Below what the cores can do at all: two 512-bit FMA units a core (64 float32 FLOPs a cycle) at the fastest
    # clock /proc/cpuinfo lists (5 GHz where it lists none). The 4 fake devices share one CPU, so the figure is
    # counted once, not 4 times (that would break this bound on a 2-core machine).
    mhz = [float(line.split(":")[1]) for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
           if line.startswith("cpu MHz")] or [5000.0]
    ceiling = os.cpu_count() * max(mhz) * 1e6 * 64
    # Above a twentieth of the same matmul in NumPy (its BLAS on the same cores; slowed down by other load, this
    # bound only gets looser).
    a, b = (np.random.default_rng(i).standard_normal((256, 256), dtype=np.float32) for i in (0, 1))
    best = float("inf")
    for _ in range(20):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    numpy_peak = 2 * 256**3 / best
    assert numpy_peak / 20 < measured < ceiling, (measured, numpy_peak, ceiling)


def test_reading_events_drops_what_a_resumed_run_logged_again(tmp_path):
    """As TensorBoard does: a writer that resumes from step 3 hides the earlier writer's steps >= 3."""
    import time

    from tensorboardX import SummaryWriter

    with SummaryWriter(str(tmp_path)) as w:
        for step in range(1, 6):
            w.add_scalar("train/loss", 1.0, step)
    time.sleep(1.1)  # event file names carry the second they were created: the resumed file sorts after
    with SummaryWriter(str(tmp_path), purge_step=3) as w:
        for step in (3, 4):
            w.add_scalar("train/loss", 2.0, step)
    assert read_run(tmp_path).scalars["train/loss"] == {1: 1.0, 2: 1.0, 3: 2.0, 4: 2.0}
