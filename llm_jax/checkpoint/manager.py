"""Checkpoints: an Orbax CheckpointManager over <workdir>/checkpoints, saving asynchronously.

Each checkpoint holds three items: `state` (step, params, optimizer state; restored onto whatever mesh the run
has now), `data` (the loader's state: global examples consumed) and `meta` (resolved config, tokenizer identity,
mesh). Orbax writes each step to a temporary directory and renames it when complete, so a run killed mid-save
leaves the previous checkpoint as the latest one.
"""

import pathlib
import time
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from llm_jax.checkpoint.integrity import write_manifest
from llm_jax.checkpoint.params import CheckpointError, abstract_like, is_hf_directory

__all__ = ["CheckpointError", "Checkpointer", "arrays_of", "check_compatible"]


def arrays_of(state) -> dict:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state, "guard": state.guard}


class Checkpointer:
    def __init__(self, workdir: str | pathlib.Path, c: ml_collections.ConfigDict):
        self.every_steps, self.every_s = c.every_steps, c.every_minutes * 60
        self.last_save = time.monotonic()  # the run's start counts as a save for the minutes rule
        self.pending: int | None = None  # the step whose background save has not been checked yet
        self.error: CheckpointError | None = None
        options = ocp.CheckpointManagerOptions(
            max_to_keep=c.keep, keep_period=c.keep_every or None, enable_async_checkpointing=c.async_save,
            create=True, cleanup_tmp_directories=True)  # what a killed save left half-written is never a checkpoint
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                    "meta": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def all_steps(self) -> list[int]:
        """Steps of complete checkpoints (orbax renames a step's directory into place only when it is whole)."""
        return list(self.manager.all_steps())

    def should_save(self, step: int) -> bool:
        return bool(self.every_steps) and step % self.every_steps == 0

    def minutes_due(self) -> bool:
        return bool(self.every_s) and time.monotonic() - self.last_save >= self.every_s

    def save(self, step: int, state, data_state: dict, meta: dict) -> None:
        """Start writing; returns once the arrays are copied off the devices (the write goes on in background).

        The previous save is finished first, so that a failure is reported with the step it belongs to.
        """
        self.wait()
        try:
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(arrays_of(state)), data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave({**meta, "step": step})), force=True)  # a copied or renamed step dir is told
        except Exception as e:
            raise self._failed(step, e) from e
        self.pending, self.last_save = step, time.monotonic()

    def poll_failed(self) -> bool:
        """Whether the background save has ended with an error (never blocks; the error is in `self.error`)."""
        if self.pending is None or self.manager.is_saving_in_progress():
            return False
        try:
            self.wait()
        except CheckpointError:
            return True
        return False

    def wait(self) -> None:
        """Wait for the background save; a failed write raises CheckpointError (once)."""
        if self.pending is None:
            return
        step, self.pending = self.pending, None
        try:
            self.manager.wait_until_finished()
            if jax.process_index() == 0 and step in self.manager.all_steps():
                write_manifest(self.directory / str(step))  # from now on, a missing or cut file is damage
        except Exception as e:
            raise self._failed(step, e) from e

    def reload(self) -> None:
        """Read the list of steps from disk again (after a damaged one was moved aside)."""
        self.manager.reload()

    def _failed(self, step: int, e: Exception) -> CheckpointError:
        """A failed write: orbax wrote into a temporary directory, so the checkpoints before it are untouched."""
        done = [s for s in self.manager.all_steps() if s != step]
        kept = (f"the last complete checkpoint, {self.directory / str(max(done))}, is intact" if done
                else "there is no complete checkpoint yet")
        why = str(e) if len(str(e)) < 400 else f"{str(e)[:150]} ... {str(e)[-200:]}"  # the OS error is at the end
        self.error = CheckpointError(
            f"writing checkpoint {self.directory / str(step)} failed ({type(e).__name__}: {why}); {kept}. "
            "Free disk space or fix the directory's permissions, then run the same command again to resume")
        return self.error

    def restore(self, step: int, state, shardings) -> tuple[Any, dict]:
        """The checkpoint at `step` placed with `shardings` (the current run's), plus its data state. The saved
        arrays must match `state`'s: train/resume.py checks that first (names, shapes, dtypes)."""
        target = abstract_like(arrays_of(state), arrays_of(shardings))
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
        return state.replace(**restored["state"]), dict(restored["data"])

    def read_meta(self, step: int) -> dict:
        return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def close(self) -> None:
        try:
            self.manager.close()
        except Exception:
            if self.error is None:  # else it is the failure already reported
                raise


def check_compatible(meta: dict, tokenizer_identity: dict, where: pathlib.Path) -> None:
    """Refuse to resume with another tokenizer: token ids would silently mean different text. A parameter file or
    Hugging Face directory that records none (a directory without tokenizer files) is taken to use the config's."""
    saved = meta.get("tokenizer", {})
    if not saved and (str(where).endswith(".safetensors") or is_hf_directory(pathlib.Path(where))):
        return
    if saved.get("hash") != tokenizer_identity["hash"]:
        raise CheckpointError(f"{where} was trained with tokenizer {saved} but the config gives {tokenizer_identity}; "
                              "set data.tokenizer/data.tokenizer_path to the run's tokenizer, or use a new workdir")
