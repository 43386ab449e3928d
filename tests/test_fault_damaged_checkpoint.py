"""Fault: a checkpoint's files are damaged after it was written. A damaged one (files missing or cut short) is
moved aside, never deleted, and its step can be saved again; a workdir of damaged checkpoints only is not
started over; a checkpoint whose files are whole but which fails to restore is reported, not skipped."""

import json
import shutil

import jax
import pytest

from llm_jax.checkpoint.manager import CheckpointError
from llm_jax.train.loop import train
from llm_jax.train.resume import ResumeRefusedError
from tests.conftest import small_config


def _config(steps=8, every=2):
    cfg = small_config()
    cfg.train.steps, cfg.checkpoint.every_steps = steps, every
    return cfg


def _steps(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _aside(workdir):
    return sorted(p.name.split(".")[0] for p in (workdir / "checkpoints").glob("*.damaged-*"))


def _cut(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _largest_array_file(step_dir):
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file() and "ocdbt.process_" in str(p)),
               key=lambda p: p.stat().st_size)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """An 8-step run saving every 2 steps (keeps 4, 6, 8), and its losses."""
    workdir = tmp_path_factory.mktemp("whole")
    return workdir, train(_config(), workdir, jax.devices()[:1])


def test_a_damaged_latest_checkpoint_is_moved_aside_and_its_step_saved_again(tmp_path, uninterrupted, capsys):
    whole_dir, whole = uninterrupted
    run = tmp_path / "run"
    shutil.copytree(whole_dir, run)
    shutil.rmtree(run / "checkpoints" / "8")  # the run died before its last save ...
    _cut(_largest_array_file(run / "checkpoints" / "6"))  # ... and step 6's biggest file was cut short since
    metrics = run / "metrics.jsonl"  # the kill also cut the log's last line
    metrics.write_text(metrics.read_text()[:-7])
    capsys.readouterr()

    resumed = train(_config(), run, jax.devices()[:1])  # saves every 2 steps: lands on the damaged step 6

    out = capsys.readouterr().out
    assert resumed.start_step == 4
    assert f"checkpoint {run / 'checkpoints' / '6'} is damaged" in out and "bytes, written with" in out
    assert _aside(run) == ["6"], "the damaged checkpoint is kept beside the new ones"
    assert _steps(run) == [4, 6, 8]
    assert resumed.train_losses == whole.train_losses[4:], "resumed losses must equal the uninterrupted run's"
    steps = [r["step"] for r in map(json.loads, metrics.read_text().splitlines()) if "loss" in r]
    assert steps == list(range(1, 9))


def test_a_workdir_of_damaged_checkpoints_only_is_refused_not_started_over(tmp_path, uninterrupted):
    whole_dir, _ = uninterrupted
    run = tmp_path / "run"
    shutil.copytree(whole_dir, run)
    for step in _steps(run):
        (run / "checkpoints" / str(step) / "state" / "_METADATA").unlink()
    log = (run / "metrics.jsonl").read_text()

    for _ in range(2):  # the second start finds the moved-aside ones only, and refuses again
        with pytest.raises(ResumeRefusedError, match="holds no whole checkpoint, only damaged ones moved aside"):
            train(_config(), run, jax.devices()[:1])
    assert _aside(run) == ["4", "6", "8"] and _steps(run) == []
    assert (run / "metrics.jsonl").read_text() == log and not (run / "previous_runs").exists()


def test_a_whole_checkpoint_that_fails_to_restore_is_reported_and_not_skipped(tmp_path, uninterrupted):
    whole_dir, whole = uninterrupted
    run = tmp_path / "run"
    shutil.copytree(whole_dir, run)
    shutil.rmtree(run / "checkpoints" / "8")
    target = _largest_array_file(run / "checkpoints" / "6")
    original = target.read_bytes()
    target.write_bytes(bytes(len(original)))  # same size: not damage that can be proven, so not skipped

    with pytest.raises(CheckpointError, match=r"restoring .*checkpoints/6 failed .*its files are all there with their "
                                              r"sizes, so it was not skipped and nothing was deleted.*\(mv "):
        train(_config(), run, jax.devices()[:1])
    assert _steps(run) == [4, 6] and _aside(run) == []

    target.write_bytes(original)  # the cause is fixed (a flaky read, say): the same command resumes from 6
    resumed = train(_config(), run, jax.devices()[:1])
    assert resumed.start_step == 6 and resumed.train_losses == whole.train_losses[6:]


def test_a_stray_file_named_like_a_step_is_moved_aside_not_overwritten(tmp_path, uninterrupted, capsys):
    whole_dir, whole = uninterrupted
    run = tmp_path / "run"
    shutil.copytree(whole_dir, run)
    shutil.rmtree(run / "checkpoints" / "8")
    (run / "checkpoints" / "8").write_text("notes of mine\n")  # the step the resumed run will save

    resumed = train(_config(), run, jax.devices()[:1])
    assert resumed.start_step == 6 and resumed.train_losses == whole.train_losses[6:]
    out = capsys.readouterr().out
    assert f"{run / 'checkpoints' / '8'} is not a checkpoint; moved it to 8.not-a-checkpoint-" in out
    (kept,) = (run / "checkpoints").glob("8.not-a-checkpoint-*")
    assert kept.read_text() == "notes of mine\n" and _steps(run) == [4, 6, 8]


def test_a_checkpoint_directory_renamed_by_hand_is_refused(tmp_path, uninterrupted, capsys):
    whole_dir, _ = uninterrupted
    run = tmp_path / "run"
    shutil.copytree(whole_dir, run)
    shutil.copytree(run / "checkpoints" / "6", run / "checkpoints" / "9")  # the state inside is step 6's
    with pytest.raises(ResumeRefusedError, match=r"checkpoints/9 holds the state of step 6, not 9"):
        train(_config(steps=12), run, jax.devices()[:1])
    assert _steps(run) == [4, 6, 8, 9]
    from llm_jax.cli import main

    out = f"--out={tmp_path / 'x.safetensors'}"
    for command in (["eval", f"--workdir={run}"], ["export", f"--workdir={run}", out]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "checkpoints/9 holds the state of step 6, not 9" in err[0], err


def test_a_whole_checkpoint_whose_config_does_not_parse_is_one_line_and_left_in_place(tmp_path, uninterrupted):
    whole_dir, _ = uninterrupted
    run = tmp_path / "run"
    shutil.copytree(whole_dir, run)
    meta = run / "checkpoints" / "8" / "meta" / "metadata"
    meta.write_bytes(b"x" * meta.stat().st_size)  # same size: whole as far as the file list can tell
    with pytest.raises(CheckpointError, match=r"reading the saved config of .*checkpoints/8 failed \(JSONDecodeError"
                                              r".* move it aside \(mv .*checkpoints/8 .*checkpoints/8.damaged\)"):
        train(_config(steps=10), run, jax.devices()[:1])
    assert _steps(run) == [4, 6, 8] and _aside(run) == []


def test_eval_skips_a_damaged_latest_checkpoint_and_names_a_damaged_one_it_is_given(tmp_path, uninterrupted, capsys):
    from llm_jax.cli import main

    whole_dir, _ = uninterrupted
    run = tmp_path / "run"
    shutil.copytree(whole_dir, run)
    _cut(_largest_array_file(run / "checkpoints" / "8"))
    assert main(["eval", f"--workdir={run}"]) == 0
    out = capsys.readouterr().out
    assert f"{run / 'checkpoints' / '6'} (step 6): validation loss" in out
    assert f"newer checkpoints are damaged and were skipped: {run / 'checkpoints' / '8'}" in out
    assert main(["eval", f"--workdir={run}", "--step=8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{run / 'checkpoints' / '8'} is damaged (" in err[0] and "--step=N" in err[0], err
