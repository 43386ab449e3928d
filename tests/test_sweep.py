"""Ablation sweeps: experiment definitions are checked before anything runs; `llm-jax sweep run` trains every
(variant, seed) through launch/, skips finished runs and resumes interrupted ones; the report's table and plots
come from the runs' TensorBoard event files."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from llm_jax.cli import main
from llm_jax.monitor.events import read_run
from llm_jax.monitor.writers import Writers
from llm_jax.sweep import ExperimentError, load_experiment
from llm_jax.sweep.experiment import expand_grid
from llm_jax.sweep.report import write_report
from tests.conftest import REPO, TRAIN_CONFIG
from tests.test_launch import check_train_args, train_commands
from tests.test_orphans import descendants, describe, end_all, wait_all_gone

# The conftest small model, as an experiment's base (values typed as in a definition file).
BASE = {"model.num_layers": 2, "model.d_model": 64, "model.mlp_dim": 128, "model.max_seq_len": 64,
        "train.seq_len": 32, "train.global_batch": 8, "train.eval_batches": 2, "train.steps": 12,
        "train.eval_every": 4, "train.log_every": 4, "optimizer.warmup_steps": 2, "sample.max_new_tokens": 0}


def write_experiment(tmp_path: pathlib.Path, name: str = "ablate", **fields) -> pathlib.Path:
    fields = {"config": f"{TRAIN_CONFIG}:model=tiny,topology=cpu", "base": BASE,
              "variants": [("rms", {"model.norm": "rmsnorm"}), ("ln", {"model.norm": "layernorm"})],
              "seeds": (0, 1), **fields}
    path = tmp_path / f"{name}.py"
    path.write_text("from llm_jax.sweep import Experiment\n\nEXPERIMENT = Experiment(\n" +
                    "".join(f"    {k}={v!r},\n" for k, v in fields.items()) + ")\n")
    return path


def sweep_cli(*args: str, timeout: int = 600, **popen) -> subprocess.Popen | subprocess.CompletedProcess:
    """`python -m llm_jax sweep ...` from the repository root, with the devices the CLI sets up itself."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cmd = [sys.executable, "-m", "llm_jax", "sweep", *args]
    if popen:
        return subprocess.Popen(cmd, cwd=REPO, env=env, text=True, **popen)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


# --- bad definitions fail at once, naming the problem ---------------------------------------------------------

BAD = {
    "unknown key in a variant": (dict(variants=[("a", {"model.nrom": "layernorm"}), ("b", {})]),
                                 ["'model.nrom'", "variant 'a'", "did you mean model.norm"]),
    "unknown key in the base": (dict(base={**BASE, "train.stpes": 5}), ["'train.stpes'", "did you mean train.steps"]),
    "duplicate variant names": (dict(variants=[("a", {"model.norm": "rmsnorm"}), ("a", {"model.norm": "layernorm"})]),
                                ["variant name 'a' is used twice"]),
    "empty grid": (dict(variants=[], grid={}), ["grid is empty"]),
    "grid key without values": (dict(variants=[], grid={"optimizer.lr": []}), ["grid key 'optimizer.lr' has no"]),
    "variants as a dict": (dict(variants={"a": {}, "b": {}}), ["not a dict"]),
    "no variants": (dict(variants=[]), ["no variants"]),
    "value of the wrong type": (dict(variants=[("a", {"model.num_layers": "four"}), ("b", {})]),
                                ["'model.num_layers'", "expects int"]),
    "value the config rejects": (dict(variants=[("a", {"model.norm": "batchnorm"}), ("b", {})]),
                                 ["variant 'a'", "model.norm='batchnorm' is not one of"]),
    "identical variants": (dict(variants=[("a", {"model.norm": "rmsnorm"}), ("b", {})]),
                           ["variants 'a' and 'b' give the same config"]),
    "a seed in a variant": (dict(variants=[("a", {"train.seed": 3}), ("b", {})]), ["sets train.seed"]),
    "repeated seeds": (dict(seeds=(0, 0)), ["lists a seed twice"]),
    "unknown metric": (dict(metrics=("eval/f1",)), ["eval/f1", "choose from"]),
    "a name that is no directory name": (dict(variants=[("a/b", {}), ("c", {"model.norm": "layernorm"})]),
                                         ["must be a directory name"]),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_definitions_fail_before_any_run(case, tmp_path, capsys):
    fields, expected = BAD[case]
    path = write_experiment(tmp_path, **fields)
    with pytest.raises(ExperimentError) as info:
        load_experiment(path, tmp_path / "runs")
    for text in expected:
        assert text in str(info.value), f"{case}: {text!r} not in: {info.value}"
    # From the command line: one line, exit status 2, and not a directory made.
    assert main(["sweep", "run", str(path), "--root", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("experiment error: ") and expected[0] in err
    assert not (tmp_path / "runs").exists()


def test_grid_names_and_only(tmp_path, capsys):
    assert [n for n, _ in expand_grid({"optimizer.lr": [1e-3, 3e-3], "model.norm": ["rmsnorm", "layernorm"]}, "x")] \
        == ["lr=0.001,norm=rmsnorm", "lr=0.001,norm=layernorm", "lr=0.003,norm=rmsnorm", "lr=0.003,norm=layernorm"]
    path = write_experiment(tmp_path, variants=[], grid={"optimizer.lr": [1e-3, 3e-3]})
    root = tmp_path / "runs"
    assert main(["sweep", "run", str(path), "--root", str(root), "--launcher=print", "--only=lr=0.003"]) == 0
    commands = train_commands(capsys.readouterr().out.replace("llm-jax train", "python -m llm_jax train"))
    assert [c[1] for c in commands] == [f"--workdir={root}/ablate/lr=0.003/seed_{s}" for s in (0, 1)]
    assert main(["sweep", "run", str(path), "--root", str(root), "--only=lr=0.1"]) == 2
    assert "no variant 'lr=0.1'" in capsys.readouterr().err and not root.exists()


def test_print_launcher_commands_are_valid_train_commands(tmp_path, capsys):
    path = write_experiment(tmp_path)
    root = tmp_path / "runs"
    assert main(["sweep", "run", str(path), "--root", str(root), "--launcher=print", "--config.train.steps=7"]) == 0
    out = capsys.readouterr().out
    commands = train_commands(out.replace("llm-jax train", "python -m llm_jax train"))
    assert len(commands) == 4 and not root.exists()  # printing writes nothing
    for args, (variant, seed) in zip(commands, [("rms", 0), ("rms", 1), ("ln", 0), ("ln", 1)], strict=True):
        check_train_args([a.replace(TRAIN_CONFIG, "configs/train.py") for a in args])
        assert f"--workdir={root}/ablate/{variant}/seed_{seed}" in args
        assert f"--config.train.seed={seed}" in args and "--config.train.steps=7" in args
        assert f"--config.model.norm={ {'rms': 'rmsnorm', 'ln': 'layernorm'}[variant] }" in args


# --- the report, from real event files with known values ------------------------------------------------------

def _fake_run(workdir: pathlib.Path, losses: dict[int, float], speeds: list[float], finished: bool = True):
    """Event files as the train loop writes them (the real writer), with chosen values."""
    writers = Writers(workdir, enabled=True, progress_bar=False)
    writers.hparams({"train": {"global_batch": 8, "seq_len": 32}}, {"num_params": 123456})
    for i, speed in enumerate(speeds):
        writers.scalars(4 * (i + 1), {"loss": 3.0, "tokens_per_s": speed})
    for step, loss in losses.items():
        writers.scalars(step, {"loss": loss}, prefix="eval_")
    if finished:
        writers.end_hparams()
    writers.close()


def test_report_table_and_plot_from_event_files(tmp_path):
    path = write_experiment(tmp_path, metrics=("eval/loss",))
    sweep = load_experiment(path, tmp_path / "runs")
    d = sweep.directory
    _fake_run(d / "rms/seed_0", {4: 2.5, 8: 2.0}, [100.0, 300.0, 200.0])
    _fake_run(d / "rms/seed_1", {4: 2.4, 8: 2.2}, [400.0])
    _fake_run(d / "ln/seed_0", {4: 2.6, 8: 1.9}, [50.0])
    _fake_run(d / "ln/seed_1", {4: 2.0, 8: 1.5}, [60.0], finished=False)  # interrupted: left out of the table
    md_path, plots, text = write_report(sweep)
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.splitlines()[2:]}
    # rms: final 2.0 and 2.2 -> 2.1 ± 0.1414; best the same; tokens/s: medians 200 and 400 -> 300 ± 141
    assert rows["rms"][2:6] == ["2/2", "2.1000 ± 0.1414", "2.1000 ± 0.1414", "300 ± 141"]
    assert rows["ln"][2:6] == ["1/2", "**1.9000**", "1.9000", "50"]  # the best final loss is in bold
    assert rows["ln"][6].strip(" |") == "0.123M" and rows["rms"][1] == "`model.norm=rmsnorm`"
    report = md_path.read_text()
    assert text in report and "Not finished" in report and "ln/seed_1" in report
    assert "![eval/loss](eval_loss.png)" in report
    assert plots == [d / "eval_loss.png"]
    png = plots[0].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_report_without_runs_says_so(tmp_path, capsys):
    path = write_experiment(tmp_path)
    assert main(["sweep", "report", str(path), "--root", str(tmp_path / "runs")]) == 2
    assert "no runs of" in capsys.readouterr().err


# --- end to end: run, interrupt, resume, report ---------------------------------------------------------------

def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the sweep exited early:\n{proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_sweep_runs_resumes_and_reports(tmp_path):
    path = write_experiment(tmp_path)
    root = tmp_path / "runs"
    d = root / "ablate"
    first, second = d / "rms/seed_0", d / "rms/seed_1"

    # Interrupt the sweep while the second run compiles its first step: that run saves a checkpoint and stops,
    # and the sweep stops with it instead of starting the next run.
    proc = sweep_cli("run", str(path), "--root", str(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: (second / "train.log").exists() and "tokenizer:" in (second / "train.log").read_text(), proc)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "sweep stopped by signal" in out and "stopped by signal" in (second / "train.log").read_text()
    assert read_run(first / "tensorboard").finished and not read_run(second / "tensorboard").finished
    assert (second / "checkpoints").is_dir() and not (d / "ln").exists()
    untouched = {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()}

    out = sweep_cli("run", str(path), "--root", str(root))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "4 runs in" in out.stdout and "1 finished, 1 partial, 2 new" in out.stdout
    assert "resuming ablate/rms/seed_1" in out.stdout and "starting ablate/rms/seed_0" not in out.stdout
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()} == untouched  # not run again
    assert "resumed from" in (second / "train.log").read_text()
    events = {(v, s): read_run(d / v / f"seed_{s}" / "tensorboard") for v in ("rms", "ln") for s in (0, 1)}
    assert all(e.finished and max(e.scalars["eval/loss"]) == 12 for e in events.values())

    again = sweep_cli("run", str(path), "--root", str(root))  # nothing left to do
    assert again.returncode == 0 and "4 finished" in again.stdout and "===" not in again.stdout
    changed = sweep_cli("run", str(path), "--root", str(root), "--config.train.steps=20")
    assert changed.returncode == 2 and "train.steps: 12 -> 20" in changed.stderr

    out = sweep_cli("report", str(path), "--root", str(root))
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in out.stdout.splitlines()
            if line.startswith("| rms") or line.startswith("| ln")}
    for variant in ("rms", "ln"):
        finals = [events[variant, s].scalars["eval/loss"][12] for s in (0, 1)]
        mean = sum(finals) / 2
        assert rows[variant][2] == "2/2" and rows[variant][3].strip("*").startswith(f"{mean:.4f} ± "), rows[variant]
        params = events[variant, 0].hparams["num_params"]
        assert rows[variant][-1].strip(" |") == f"{params / 1e6:.3f}M"
    assert finals[0] != finals[1]  # the seeds differ
    assert (d / "report.md").exists() and (d / "eval_loss.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((first / "sweep.json").read_text())["settings"]["train.seed"] == 0


def test_ctrl_c_twice_stops_every_process_of_a_multi_process_run(tmp_path, monkeypatch):
    """The first Ctrl-C asks the run to save and stop; a second, before it has, must not leave any of its NPROC
    training processes running on (the launcher alone dying would orphan them)."""
    monkeypatch.setenv("NPROC", "2")
    monkeypatch.setenv("DEVICES_PER_PROC", "1")
    path = write_experiment(tmp_path, base={**BASE, "train.steps": 100000, "train.log_every": 1}, seeds=(0,))
    run, log = tmp_path / "runs/ablate/rms/seed_0", tmp_path / "sweep.log"
    with log.open("w") as out:  # a file, not a pipe: a leftover process holding the pipe open cannot hang the test
        proc = sweep_cli("run", str(path), "--root", str(tmp_path / "runs"), stdout=out, stderr=subprocess.STDOUT)
    below: set = set()
    try:
        deadline = time.monotonic() + 300
        while not ((run / "metrics.jsonl").exists() and '"loss"' in (run / "metrics.jsonl").read_text()):
            assert proc.poll() is None, f"the sweep exited early:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the run did not start training"
            time.sleep(0.1)
        below = descendants(proc.pid)
        assert len([p for p in below if b"llm_jax" in pathlib.Path(f"/proc/{p[0]}/cmdline").read_bytes()]) >= 2
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)  # before the launcher has passed the first one on
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        left = wait_all_gone(below, timeout=5)
        assert not left, f"still running after two Ctrl-C: {describe(left)}"
        assert "sweep stopped by signal 2 during rms/seed_0" in log.read_text(), log.read_text()[-3000:]
    finally:
        end_all(proc, below)


# --- a cluster launcher: one SLURM job per run, through launch/slurm.sbatch --------------------------------------

def _slurm_stubs(tmp_path: pathlib.Path) -> pathlib.Path:
    """Stand-ins for sbatch (records its arguments and environment, answers like sbatch) and squeue (reports the
    job ids listed in queued.txt as running)."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "sbatch").write_text(
        f"#!{sys.executable}\nimport json, os, sys\nlog = os.path.join(os.environ['STUB_DIR'], 'sbatch.jsonl')\n"
        "n = sum(1 for _ in open(log)) if os.path.exists(log) else 0\n"
        "keep = ('CONFIG', 'WORKDIR', 'NODES', 'JOB_NAME', 'JOB_OUTPUT')\n"
        "with open(log, 'a') as f:\n"
        "    f.write(json.dumps({'argv': sys.argv[1:], 'env': {k: os.environ.get(k) for k in keep}}) + '\\n')\n"
        "print(f'Submitted batch job {100 + n}')\n")
    (stubs / "squeue").write_text(
        f"#!{sys.executable}\nimport os, sys\njob = sys.argv[sys.argv.index('-j') + 1]\n"
        "path = os.path.join(os.environ['STUB_DIR'], 'queued.txt')\n"
        "if os.path.exists(path) and job in open(path).read().split():\n    print('RUNNING')\n")
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    return stubs


def test_slurm_launcher_submits_one_job_per_run(tmp_path, monkeypatch, capsys):
    stubs = _slurm_stubs(tmp_path)
    monkeypatch.setenv("PATH", f"{stubs}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STUB_DIR", str(stubs))
    monkeypatch.delenv("NODES", raising=False)
    monkeypatch.chdir(REPO)  # the sweep, like sbatch, runs from the repository root
    path = write_experiment(tmp_path)
    root = tmp_path / "runs"
    assert main(["sweep", "run", str(path), "--root", str(root), "--launcher=slurm"]) == 0
    calls = [json.loads(line) for line in (stubs / "sbatch.jsonl").read_text().splitlines()]
    assert len(calls) == 4 and "submitted 4 jobs" in capsys.readouterr().out
    for i, (call, (variant, seed)) in enumerate(zip(calls, [("rms", 0), ("rms", 1), ("ln", 0), ("ln", 1)],
                                                     strict=True)):
        workdir = (root / "ablate" / variant / f"seed_{seed}").resolve()
        assert call["argv"][:3] == ["--nodes=1", f"--job-name=ablate/{variant}/seed_{seed}",
                                    f"--output={workdir}/slurm-%j.out"]
        assert call["argv"][3] == "launch/slurm.sbatch" and f"--config.train.seed={seed}" in call["argv"]
        assert call["env"]["WORKDIR"] == str(workdir) and workdir.is_dir()  # sbatch needs the output's directory
        # What the job runs on its node: the srun line of the script itself, inside a (dry-run) job.
        env = {**{k: v for k, v in call["env"].items() if v is not None}, "SLURM_JOB_ID": "7", "SLURM_NNODES": "1",
               "SLURM_JOB_NODELIST": "n1", "DRY_RUN": "1", "PATH": os.environ["PATH"]}
        job = subprocess.run(["bash", "launch/slurm.sbatch", *call["argv"][4:]], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=60)
        assert job.returncode == 0, job.stderr
        (args,) = train_commands(job.stdout)
        check_train_args([a.replace(TRAIN_CONFIG, "configs/train.py") for a in args], (1, 1, 1))
        assert f"--workdir={workdir}" in args and f"--config.train.seed={seed}" in args
        assert json.loads((workdir / "sweep.json").read_text())["job_id"] == str(100 + i)

    # SLURM still has the jobs: nothing is submitted twice. Once it has forgotten them, unfinished runs go again.
    (stubs / "queued.txt").write_text("100 101 102 103\n")
    assert main(["sweep", "run", str(path), "--root", str(root), "--launcher=slurm"]) == 0
    assert "4 queued" in capsys.readouterr().out and len((stubs / "sbatch.jsonl").read_text().splitlines()) == 4
    (stubs / "queued.txt").write_text("101\n")
    assert main(["sweep", "run", str(path), "--root", str(root), "--launcher=slurm", "--only=ln"]) == 0
    assert "2 new" in capsys.readouterr().out and len((stubs / "sbatch.jsonl").read_text().splitlines()) == 6


def test_best_is_the_lowest_loss_and_the_highest_accuracy():
    from llm_jax.sweep.report import RunResult

    r = RunResult(run=None, finished=True, series={"eval/loss": {1: 3.0, 2: 2.0, 3: 2.5},
                                                   "eval/accuracy": {1: 0.2, 2: 0.4, 3: 0.3}},
                  tokens_per_s=1.0, num_params=1, tokens_per_step=1)
    assert r.best("eval/loss") == 2.0 and r.best("eval/accuracy") == 0.4
    assert r.final("eval/accuracy") == 0.3
