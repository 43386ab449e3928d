"""Resume a run from its workdir without ever starting over or throwing a checkpoint away.

- Only a checkpoint whose files are missing or cut short (checkpoint/integrity.py) is damaged: it is moved aside
  (`checkpoints/<step>.damaged-<time>`) and the one before it is tried. Every process checks what it reads and all
  of them fall back together, so they resume from the same step.
- A workdir whose checkpoints are all damaged is an error, not a fresh start.
- The newest whole checkpoint's saved config is compared with this run's: a change of the model (any `model.*`
  key but those of HOW_COMPUTED) or of the tokenizer is refused with the diff; other changes (steps, lr, cadences,
  the attention implementation, remat) are shown and recorded.
- A saved state of another structure, shape or dtype is refused naming what differs. Any other error while
  restoring is raised: the checkpoint is not skipped, so a later save can never rotate it away.
"""

import dataclasses
import json
import pathlib
from typing import Any

import jax

from llm_jax.checkpoint.integrity import MANIFEST, damage, move_aside, moved_aside, unreadable, write_manifest
from llm_jax.checkpoint.manager import Checkpointer, CheckpointError, arrays_of, check_compatible
from llm_jax.checkpoint.params import step_mismatch
from llm_jax.config.base import base_config
from llm_jax.config.load import flatten
from llm_jax.train.preemption import agree_any

REFUSED_PREFIXES = ("model.",)  # changing these continues a different model from the saved weights
# Model keys that say how the same function of the same weights is computed, not which function: a run moved to a
# GPU or a longer context may switch them on resume.
HOW_COMPUTED = frozenset({"model.attention", "model.attention_block_q", "model.attention_block_kv",
                          "model.attention_chunked_from", "model.remat", "model.dtype", "model.grad_reduce_dtype"})


class ResumeRefusedError(CheckpointError):
    """The workdir's checkpoint cannot be continued with this config; nothing was changed on disk."""


@dataclasses.dataclass
class ResumePoint:
    step: int  # 0: no checkpoint, a new run
    changes: dict[str, list]  # config key -> [saved value, this run's value]


def _options(where: pathlib.Path) -> str:
    return (f"run with the config it was saved with ({where.parent.parent / 'config.json'}), start a new run "
            f"from its parameters with --config.checkpoint.init_from={where} and a new --workdir, or use a new "
            "--workdir")


NOT_SET = "(not set)"


def config_changes(saved: dict, now: dict) -> dict[str, list]:
    """Keys whose value differs between a checkpoint's saved config and this run's (both as JSON). A key that
    only one side has counts when its value is not today's default (a key added since is no change)."""
    defaults = flatten(json.loads(base_config().to_json_best_effort()))
    before, after = flatten(saved), flatten(now)
    changes = {}
    for key in sorted(before.keys() | after.keys()):
        old, new = before.get(key, defaults.get(key)), after.get(key, defaults.get(key))
        if old != new:
            changes[key] = [before.get(key, NOT_SET), after.get(key, NOT_SET)]
    return changes


def shown(changes: dict[str, list]) -> str:
    return ", ".join(f"{k}: {json.dumps(a)} -> {json.dumps(b)}" for k, (a, b) in changes.items())


def choose(ckpt: Checkpointer, cfg_json: dict, tokenizer_identity: dict, say) -> ResumePoint:
    """The newest checkpoint whole on every process (damaged ones moved aside), checked against this run's config
    (`cfg_json`, the finalized config as JSON). Cheap: reads file sizes and the saved config only."""
    _move_strays(ckpt, say)
    for step in sorted(ckpt.all_steps(), reverse=True):
        where = ckpt.directory / str(step)
        problems = damage(where, jax.process_index())
        (damaged,) = agree_any(bool(problems))
        if damaged:
            if jax.process_index() == 0:
                dest = move_aside(where)
                say(f"warning: checkpoint {where} is damaged ({'; '.join(problems[:3]) or 'on another process'})"
                    f"; moved it to {dest.name} for inspection and trying the one before it")
            _sync("llm_jax_moved_aside")
            ckpt.reload()
            continue
        try:
            meta = ckpt.read_meta(step)
        except Exception as e:  # whole files that do not parse: not provably damaged, so not skipped
            raise CheckpointError(unreadable(where, "reading the saved config of", e, jax.process_index())) from e
        wrong = step_mismatch(where, meta.get("step"))
        if wrong:
            raise ResumeRefusedError(wrong)
        try:
            check_compatible(meta, tokenizer_identity, where)
        except CheckpointError as e:
            raise ResumeRefusedError(str(e)) from None
        changes = config_changes(meta.get("config", {}), cfg_json)
        refused = {k: v for k, v in changes.items() if k.startswith(REFUSED_PREFIXES) and k not in HOW_COMPUTED}
        if refused:
            cause = [k for k in changes if k.startswith("objective.")] if "model.vocab_size" in refused else []
            why = (f" (model.vocab_size is the tokenizer's plus the objective's extra ids, [MASK] or sentinels: "
                   f"the change of {', '.join(cause)} changes it)") if cause else ""
            raise ResumeRefusedError(f"{where} was trained with another model: {shown(refused)}{why}. Resuming "
                                     f"would continue a different model from its weights; {_options(where)}")
        return ResumePoint(step, changes)
    aside = moved_aside(ckpt.directory)
    if aside:
        raise ResumeRefusedError(f"{ckpt.directory} holds no whole checkpoint, only damaged ones moved aside "
                                 f"({', '.join(p.name for p in aside)}); this run is not started over on its own: "
                                 "delete or move them to start over in this workdir, or use a new --workdir")
    return ResumePoint(0, {})


def _move_strays(ckpt: Checkpointer, say) -> None:
    """Entries named like a step that orbax does not list as a checkpoint (a file named '8', say) would be
    overwritten when that step is saved: they are moved aside first."""
    listed = set(ckpt.all_steps())
    strays = [p for p in sorted(ckpt.directory.iterdir()) if p.name.isdigit() and int(p.name) not in listed]
    if strays and jax.process_index() == 0:
        for path in strays:
            dest = move_aside(path, "not-a-checkpoint")
            say(f"warning: {path} is not a checkpoint; moved it to {dest.name} so that saving step {path.name} "
                "cannot overwrite it")
    if strays:
        _sync("llm_jax_strays_moved")


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _summary(names: set[str]) -> str:
    """Names grouped by their first three parts ('opt_state.1.0.* (43 arrays)'): an optimizer change touches
    every parameter's moments, and the list would be hundreds of lines."""
    groups: dict[str, list[str]] = {}
    for name in sorted(names):
        groups.setdefault(".".join(name.split(".")[:3]), []).append(name)
    parts = [g[0] if len(g) == 1 else f"{prefix}.* ({len(g)} arrays)" for prefix, g in groups.items()]
    return ", ".join(parts[:6]) + (f" and {len(parts) - 6} more" if len(parts) > 6 else "")


def _arrays_by_name(tree) -> dict[str, tuple[tuple[int, ...], str]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path, simple=True, separator="."): (tuple(x.shape), str(x.dtype))
            for path, x in leaves}


def check_structure(where: pathlib.Path, saved_tree: Any, state: Any, changes: dict[str, list]) -> None:
    """Refuse a saved state whose arrays (names, shapes, dtypes) differ from the state this config builds."""
    saved = _arrays_by_name(saved_tree)
    now = _arrays_by_name(arrays_of(state))
    problems = []
    if saved.keys() - now.keys():
        problems.append(f"only in the checkpoint: {_summary(saved.keys() - now.keys())}")
    if now.keys() - saved.keys():
        problems.append(f"only in this run's state: {_summary(now.keys() - saved.keys())}")
    differ = sorted(k for k in saved.keys() & now.keys() if saved[k] != now[k])
    if differ:
        problems.append("; ".join(f"{k}: checkpoint {saved[k][0]} {saved[k][1]}, this run {now[k][0]} {now[k][1]}"
                                  for k in differ[:6]) + (f" and {len(differ) - 6} more" if len(differ) > 6 else ""))
    if problems:
        why = f" (config changes since it was saved: {shown(changes)})" if changes else ""
        raise ResumeRefusedError(f"{where} holds another training state than this config builds{why}: "
                            f"{' | '.join(problems)}; {_options(where)}")


def restore(ckpt: Checkpointer, point: ResumePoint, state: Any, shardings: Any) -> tuple[Any, dict]:
    """The chosen checkpoint's state and data position. A failure is raised on every process (none goes on
    alone), and the checkpoint stays where it is."""
    where, error = ckpt.directory / str(point.step), None
    try:
        saved = ckpt.manager.item_metadata(point.step)["state"]
    except Exception as e:
        raise CheckpointError(unreadable(where, "reading the array list of", e, jax.process_index())) from e
    check_structure(where, saved, state, point.changes)
    try:
        restored = ckpt.restore(point.step, state, shardings)
    except Exception as e:  # what failed is told below; nothing is skipped
        error = e
    (failed,) = agree_any(error is not None)
    if failed:
        if error is None:
            raise CheckpointError(f"restoring {where} failed on another process; see its log")
        raise CheckpointError(unreadable(where, "restoring", error, jax.process_index())) from error
    wrong = step_mismatch(where, int(jax.device_get(restored[0].step)))  # for checkpoints saved without it in meta
    if wrong:
        raise ResumeRefusedError(wrong)
    if jax.process_index() == 0 and not (where / MANIFEST).is_file():
        write_manifest(where)  # it restored, so it is whole: from now on a lost file is seen as damage
    return restored
