"""`llm-jax sweep run`: every (variant, seed) of an experiment, one training run each, through launch/.

A run's state comes from its directory: finished (its TensorBoard session was closed by the end of training),
partial (checkpoints or logs but no end: `llm-jax train` resumes it from its latest checkpoint), queued (a SLURM job
for it is still pending or running) or new. `sweep.json` in each run directory records the config spec and the
settings the sweep gave it, so a run is never resumed under an edited definition.

Launchers: local runs one run after another on this machine through launch/local.sh (NPROC and DEVICES_PER_PROC
pass through, for a multi-process rehearsal); slurm submits one job per run through launch/slurm.sbatch (NODES,
default 1, per job); print prints each run's `llm-jax train` command and runs nothing.
"""

import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from llm_jax.config.load import flatten, get_key
from llm_jax.monitor.events import read_run
from llm_jax.sweep.experiment import ExperimentError, Run, Sweep

LAUNCHERS = ("local", "slurm", "print")


def settings(run: Run) -> dict[str, Any]:
    """The run's overrides with the types the config gave them (so '20' from the command line equals 20)."""
    return {k: get_key(run.config, k) for k in run.overrides}


def train_args(sweep: Sweep, run: Run) -> list[str]:
    """`llm-jax train` arguments for the run (values in the syntax --config.a.b=VALUE parses back)."""
    def arg(v: Any) -> str:
        return v if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else repr(v)

    return [f"--config={sweep.spec.config}", f"--workdir={run.workdir}",
            *(f"--config.{k}={arg(v)}" for k, v in settings(run).items())]


def _record(sweep: Sweep, run: Run) -> dict:
    return {"experiment": sweep.name, "file": str(sweep.path), "variant": run.variant, "seed": run.seed,
            "config": sweep.spec.config, "settings": json.loads(json.dumps(settings(run)))}


def read_record(run: Run) -> dict | None:
    path = run.workdir / "sweep.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_record(run: Run, record: dict) -> None:
    run.workdir.mkdir(parents=True, exist_ok=True)
    tmp = run.workdir / "sweep.json.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, run.workdir / "sweep.json")


def check_unchanged(sweep: Sweep, runs: list[Run]) -> None:
    """A run directory made under another definition (changed values, config spec or CLI overrides) is an error:
    resuming it would mix two configs in one curve."""
    problems = []
    for run in runs:
        old = read_record(run)
        if old is None:
            if (run.workdir / "config.json").exists():
                problems.append(f"{run.workdir} holds a run this sweep did not start")
            continue
        new = _record(sweep, run)
        diff = [f"config {old['config']!r} -> {new['config']!r}"] if old["config"] != new["config"] else []
        before, after = flatten(old["settings"]), flatten(new["settings"])
        diff += [f"{k}: {before.get(k, '(not set)')!r} -> {after.get(k, '(not set)')!r}"
                 for k in sorted(before.keys() | after.keys()) if before.get(k) != after.get(k)]
        if diff:
            problems.append(f"{run.workdir} was run with other settings ({'; '.join(diff)})")
    if problems:
        raise ExperimentError(" | ".join(problems) + " — delete those directories to run them afresh, give the "
                              "changed variants new names, or pass the same --config.* overrides as before")


def _job_queued(job_id: str) -> bool | None:
    """Whether SLURM still has the job (pending, running, ...); None when squeue cannot say."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.returncode == 0 and bool(out.stdout.strip())


def run_state(run: Run, resubmit: bool = False) -> str:
    """finished | queued | partial | new (see the module docstring)."""
    tb = run.workdir / "tensorboard"
    if tb.is_dir() and read_run(tb).finished:
        return "finished"
    record = read_record(run) or {}
    if record.get("job_id") and not resubmit:
        queued = _job_queued(record["job_id"])
        if queued or queued is None:
            return "queued"
    if (run.workdir / "checkpoints").exists() or (run.workdir / "metrics.jsonl").exists():
        return "partial"
    return "new"


def launch_dir() -> pathlib.Path:
    """launch/ of the checkout: the current directory's (the configs are read from there too), else the package's."""
    import llm_jax

    for candidate in (pathlib.Path("launch"), pathlib.Path(llm_jax.__file__).resolve().parents[1] / "launch"):
        if (candidate / "local.sh").is_file():
            return candidate
    raise ExperimentError("no launch/ directory with local.sh here or next to the llm_jax package; run "
                          "`llm-jax sweep` from the repository root")


class _Forward:
    """SIGTERM/SIGINT to the sweep go to the run's launcher once (it passes them on; the training processes save a
    checkpoint and exit); the sweep then stops instead of starting the next run. A second one kills the launcher's
    whole process group: the NPROC training processes and their data workers, not the launcher alone."""

    def __init__(self):
        self.child: subprocess.Popen | None = None
        self.signal: int | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame) -> None:
        first, self.signal = self.signal is None, signum
        if self.child is None or self.child.returncode is not None:
            return
        try:
            if first:
                self.child.send_signal(signal.SIGTERM)
            else:
                os.killpg(self.child.pid, signal.SIGKILL)  # its own session: the group id is the launcher's pid
        except ProcessLookupError:  # it has just ended
            pass

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _run_local(args: list[str], forward: _Forward) -> int:
    # Its own session: a Ctrl-C reaches the sweep alone, which passes it on once (no double signal), and the run's
    # processes form one group that a second Ctrl-C can kill together.
    forward.child = subprocess.Popen(["bash", str(launch_dir() / "local.sh"), "--", *args], start_new_session=True)
    try:
        return forward.child.wait()
    finally:
        forward.child = None


def _submit_slurm(sweep: Sweep, run: Run, args: list[str]) -> str | None:
    """Submit one job through launch/slurm.sbatch; return SLURM's job id."""
    overrides = [a for a in args if a.startswith("--config.")]  # the script sets --config and --workdir itself
    env = {**os.environ, "CONFIG": sweep.spec.config, "WORKDIR": str(run.workdir.resolve()),
           "NODES": os.environ.get("NODES", "1"), "JOB_NAME": f"{sweep.name}/{run.name}",
           "JOB_OUTPUT": str(run.workdir.resolve() / "slurm-%j.out")}
    out = subprocess.run(["bash", str(launch_dir() / "slurm.sbatch"), *overrides], env=env, capture_output=True,
                         text=True)
    if out.returncode:
        raise ExperimentError(f"submitting {run.name} failed (sbatch exit {out.returncode}): "
                              f"{(out.stderr or out.stdout).strip()[-500:]}")
    match = re.search(r"Submitted batch job (\d+)", out.stdout)
    return match.group(1) if match else None


def run_sweep(sweep: Sweep, runs: list[Run], launcher: str = "local", resubmit: bool = False,
              say: Callable[[str], None] = print) -> int:
    """Run (or submit, or print) every run of `runs` that is not finished; return the exit status."""
    if launcher not in LAUNCHERS:
        raise ExperimentError(f"--launcher={launcher}: choose one of {', '.join(LAUNCHERS)}")
    check_unchanged(sweep, runs)
    states = {run.name: run_state(run, resubmit) for run in runs}
    counts = {s: sum(v == s for v in states.values()) for s in ("finished", "queued", "partial", "new")}
    say(f"{sweep.name}: {len(runs)} runs in {sweep.directory} | " + ", ".join(f"{n} {s}" for s, n in counts.items()
                                                                                if n))
    if counts["queued"]:
        say(f"{counts['queued']} runs have a SLURM job that is still queued or running (or no squeue here to ask): "
            "not started again; --resubmit submits them anyway")
    todo = [run for run in runs if states[run.name] in ("partial", "new")]
    if launcher == "print":
        for run in todo:
            say(shlex.join(["llm-jax", "train", *train_args(sweep, run)]))
        return 0
    if launcher == "slurm":
        for run in todo:
            write_record(run, _record(sweep, run))  # the job's output file goes in the run directory
            job_id = _submit_slurm(sweep, run, train_args(sweep, run))
            write_record(run, {**_record(sweep, run), "job_id": job_id})
            say(f"{run.name}: submitted job {job_id} ({states[run.name]})")
        say(f"submitted {len(todo)} jobs; when they are done: llm-jax sweep report {sweep.path}")
        return 0

    failed, forward = [], _Forward()
    try:
        for i, run in enumerate(todo):
            if forward.signal is not None:  # it came between two runs
                say(f"sweep stopped by signal {forward.signal} before {run.name}; run the same command again to go on")
                return 0
            verb = "resuming" if states[run.name] == "partial" else "starting"
            say(f"=== [{i + 1}/{len(todo)}] {verb} {sweep.name}/{run.name} in {run.workdir}")
            write_record(run, _record(sweep, run))
            sys.stdout.flush()
            rc = _run_local(train_args(sweep, run), forward)
            if forward.signal is not None:
                say(f"sweep stopped by signal {forward.signal} during {run.name}; run the same command again to "
                    "resume it and go on with the rest")
                return 0 if rc == 0 else rc
            if run_state(run) != "finished":
                failed.append(f"{run.name} (exit status {rc})")
                say(f"=== {run.name} did not finish (exit status {rc}); its output is above and in "
                    f"{run.workdir / 'train.log'}; going on with the next run")
    finally:
        forward.restore()
    done = sum(run_state(run) == "finished" for run in runs)
    say(f"{sweep.name}: {done}/{len(runs)} runs finished" + (f"; failed: {', '.join(failed)}" if failed else "") +
        f" | tensorboard --logdir={sweep.directory} | llm-jax sweep report {sweep.path}")
    return 1 if failed else 0
