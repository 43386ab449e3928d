"""The run record, workdir/run.json: what ran, from which source, with which libraries, on which machines.

A resumed run adds its record on top and keeps the earlier ones under "earlier", so every start of the run is kept.
"""

import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import socket
import subprocess
import sys

import jax

import llm_jax

# Distribution names, as importlib.metadata knows them.
PACKAGES = ("llm_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "sentencepiece",
            "ml_collections", "tensorboardX", "numpy")


def _git(args: list[str], cwd: pathlib.Path) -> str | None:
    """Stdout of a git command, or None when git, the repository or the answer is missing; never blocks for long."""
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state(package_dir: pathlib.Path | None = None) -> dict:
    """Commit and dirtiness of the git checkout the package was imported from; None for an installed copy."""
    package_dir = package_dir or pathlib.Path(llm_jax.__file__).resolve().parent
    # A wheel installed into a venv that sits inside some checkout would otherwise report that checkout's commit.
    tracked = _git(["ls-files", "--", "__init__.py"], package_dir)
    commit = _git(["rev-parse", "HEAD"], package_dir) if tracked else None
    if not commit:
        return {"commit": None, "dirty": None}
    status = _git(["status", "--porcelain"], package_dir)
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_record(cfg_dict: dict, mesh_shape: dict, argv: list[str] | None = None) -> dict:
    """One start of a run. `cfg_dict` is the resolved config; `mesh_shape` maps mesh axis names to sizes."""
    device = jax.devices()[0]
    return {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "argv": list(sys.argv if argv is None else argv),
        "config": cfg_dict,
        "git": git_state(),
        "versions": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "device_kind": device.device_kind,
        "device_platform": device.platform,
        "mesh_shape": dict(mesh_shape),
    }


def write_run_record(workdir: pathlib.Path, record: dict) -> pathlib.Path:
    """Write `record` to workdir/run.json, keeping the records already there (oldest first) under "earlier"."""
    path = workdir / "run.json"
    earlier = []
    if path.exists():
        try:
            previous = json.loads(path.read_text())
            if not isinstance(previous, dict):
                raise ValueError("not a run record")
            earlier = [*previous.pop("earlier", []), previous]
        except ValueError:  # JSONDecodeError is one
            # Not worth stopping a run over: keep the unreadable file beside the new one for a person to look at.
            os.replace(path, path.with_name("run.json.unreadable"))
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("run.json.tmp")
    # Through a temporary file: a run killed mid-write leaves the old record whole, not a truncated one.
    tmp.write_text(json.dumps({**record, "earlier": earlier}, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path
