"""Which checkpoints are whole: a list of every file and its size, written once a save has completed.

Orbax renames a step's directory into place only when its write is done, so a run killed mid-save never leaves a
half-written step under its final name. Files can still go missing or be cut short afterwards (a disk that filled
while copying a run, a sync that stopped half-way). Only such a checkpoint counts as damaged: a checkpoint whose
files are all there, with their sizes, is never skipped, whatever error restoring it raised.
"""

import json
import os
import pathlib
import re
import time

MANIFEST = "llm_jax_files.json"
# Without a manifest (a run killed between orbax's commit and the manifest), these must exist at least.
REQUIRED = ("_CHECKPOINT_METADATA", "state/_METADATA", "state/manifest.ocdbt", "data/metadata", "meta/metadata")
_PROCESS_DIR = re.compile(r"(?:^|/)ocdbt\.process_(\d+)(?:/|$)")


def write_manifest(step_dir: pathlib.Path) -> None:
    """Record every file of a completed checkpoint with its size (through a temporary file: never half a list)."""
    files = {str(p.relative_to(step_dir)): p.stat().st_size for p in sorted(step_dir.rglob("*"))
             if p.is_file() and p.name != MANIFEST}
    tmp = step_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"files": files}, indent=0) + "\n")
    os.replace(tmp, step_dir / MANIFEST)


def damage(step_dir: pathlib.Path, process_index: int = 0) -> list[str]:
    """What is missing or cut short in `step_dir`, as this process sees it (empty: whole). Each process checks
    the files every process reads plus its own array shards (`ocdbt.process_<i>`), as it would read them."""
    manifest = step_dir / MANIFEST
    if not manifest.is_file():
        return [f"{name}: missing" for name in REQUIRED if not (step_dir / name).is_file()]
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError, OSError) as e:
        return [f"{MANIFEST}: unreadable ({type(e).__name__})"]
    problems = []
    for name, size in files.items():
        owner = _PROCESS_DIR.search(name)
        if owner and int(owner.group(1)) != process_index:
            continue
        path = step_dir / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != size:
            problems.append(f"{name}: {path.stat().st_size} bytes, written with {size}")
    return problems


def move_aside(step_dir: pathlib.Path, why: str = "damaged") -> pathlib.Path:
    """Rename a damaged checkpoint (or an entry that is no checkpoint: `why`) out of the way, kept for inspection,
    never deleted: its step can be saved again, and orbax no longer lists it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = step_dir.with_name(f"{step_dir.name}.{why}-{stamp}")
    n = 1
    while dest.exists():
        n += 1
        dest = step_dir.with_name(f"{step_dir.name}.{why}-{stamp}-{n}")
    os.replace(step_dir, dest)
    return dest


def moved_aside(checkpoints: pathlib.Path) -> list[pathlib.Path]:
    return sorted(checkpoints.glob("*.damaged-*")) if checkpoints.is_dir() else []


RESUME_SKIPS = "run the same command again: it is moved aside and the one before it is used"


def unreadable(where: pathlib.Path, doing: str, error: Exception, process_index: int = 0,
               when_damaged: str = RESUME_SKIPS) -> str:
    """One line for a checkpoint that failed to load: what failed, whether its files are damaged, and what to do.
    Whole files are not skipped on their own (the cause may pass): the line says how to set it aside by hand."""
    text = str(error).split(" See full TensorStore details")[0]  # what follows is a repr of the whole spec
    cause = f"{type(error).__name__}: {' '.join(text.split())[:240]}"
    problems = damage(where, process_index)
    if problems:
        return f"{doing} {where} failed ({cause}); its files are damaged ({'; '.join(problems[:3])}); {when_damaged}"
    checked = ("its files are all there with their sizes" if (where / MANIFEST).is_file()
               else "it has no file list to check it against (it was written just before a kill)")
    return (f"{doing} {where} failed ({cause}); {checked}, so it was not skipped and nothing was deleted. If the "
            "cause passes (memory, I/O, permissions), run the same command again; if the checkpoint itself is bad, "
            f"move it aside (mv {where} {where}.damaged) and the same command uses the one before")
