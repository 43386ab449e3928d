"""Run files in a workdir: an earlier run is moved aside, never overwritten or mixed with the new one."""

import json
import subprocess
import sys

from llm_jax.monitor.writers import Writers, archive_previous_run, drop_records_after, flat_hparams
from tests.conftest import REPO


def test_each_earlier_run_gets_its_own_archive(tmp_path):
    assert archive_previous_run(tmp_path) is None  # nothing to move in a fresh workdir
    for run in ("first", "second"):
        (tmp_path / "metrics.jsonl").write_text(run)
        (tmp_path / "tensorboard").mkdir()
        (tmp_path / "tensorboard" / "events").write_text(run)
        archive_previous_run(tmp_path)
    assert (tmp_path / "previous_runs" / "1" / "metrics.jsonl").read_text() == "first"
    assert (tmp_path / "previous_runs" / "2" / "metrics.jsonl").read_text() == "second"
    assert (tmp_path / "previous_runs" / "2" / "tensorboard" / "events").read_text() == "second"
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "tensorboard").exists()


def test_unrelated_files_stay(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("x")
    (tmp_path / "notes.txt").write_text("mine")
    assert archive_previous_run(tmp_path) == tmp_path / "previous_runs" / "1"
    assert (tmp_path / "notes.txt").read_text() == "mine"


def _log_steps(workdir, steps, resume_step=0):
    """metrics.jsonl (and events) written by the real Writers, as a training run writes them."""
    writers = Writers(workdir, enabled=True, resume_step=resume_step, progress_bar=False)
    for step in steps:
        writers.scalars(step, {"loss": 5.0 - 0.1 * step, "lr": 1e-3})
    writers.close()
    return writers


def test_resume_after_a_kill_mid_write_keeps_the_records_up_to_the_checkpoint(tmp_path):
    _log_steps(tmp_path, range(1, 7))
    path = tmp_path / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
    with path.open("r+b") as f:  # the run was killed halfway through writing step 6's record
        f.truncate(path.stat().st_size - len(lines[-1]) // 2)

    _log_steps(tmp_path, [5, 6], resume_step=4)  # resumed from the step-4 checkpoint

    resumed = path.read_text().splitlines(keepends=True)
    assert resumed[:4] == lines[:4]  # the records up to the checkpoint, byte for byte
    assert [json.loads(line)["step"] for line in resumed] == [1, 2, 3, 4, 5, 6]
    assert "dropped its last line, cut off mid-write" in (tmp_path / "train.log").read_text()


def test_a_record_cut_just_before_its_newline_is_kept_on_its_own_line(tmp_path):
    _log_steps(tmp_path, range(1, 4))
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(path.read_bytes()[:-1])  # step 3 complete but for its newline
    _log_steps(tmp_path, [4], resume_step=3)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]


def test_an_undecodable_line_inside_the_log_is_dropped_with_a_note(tmp_path):
    _log_steps(tmp_path, range(1, 5))
    path = tmp_path / "metrics.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([lines[0], b'{"step": 2, "lo\xe2\n', *lines[2:]]))  # garbage where step 2 was
    notes = drop_records_after(path, 3)
    assert path.read_bytes() == lines[0] + lines[2]
    assert len(notes) == 1 and f"{path}: dropped line 2, which is not JSON" in notes[0]


def test_a_full_disk_mid_rewrite_leaves_the_log_whole(tmp_path):
    """The rewrite runs in a process that may write only a few hundred bytes (RLIMIT_FSIZE: as a full disk)."""
    _log_steps(tmp_path, range(1, 41))
    path = tmp_path / "metrics.jsonl"
    before = path.read_bytes()
    limit = len(before) // 4  # less than the 30 records kept
    code = ("import resource, pathlib, sys; n = int(sys.argv[2]); resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); "
            "from llm_jax.monitor.writers import drop_records_after; "
            "drop_records_after(pathlib.Path(sys.argv[1]), 30)")
    out = subprocess.run([sys.executable, "-c", code, str(path), str(limit)], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0 and "File too large" in out.stderr, out.stderr[-2000:]
    assert path.read_bytes() == before and not (tmp_path / "metrics.jsonl.tmp").exists()


def test_the_hparams_tab_gets_the_keys_researchers_compare_not_the_plumbing(tmp_path):
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    from llm_jax.monitor.events import iter_events
    from tests.conftest import small_config

    config = json.loads(small_config().to_json_best_effort())  # as the training loop passes it
    writers = Writers(tmp_path, enabled=True, progress_bar=False)
    writers.hparams(config, {"num_params": 123})
    writers.close()
    names = [info.name for event in iter_events(tmp_path / "tensorboard") for value in event.summary.value
             if value.tag == "_hparams_/experiment"
             for info in HParamsPluginData.FromString(value.metadata.plugin_data.content).experiment.hparam_infos]
    sections = {n.split(".")[0] for n in names if "." in n}
    assert sections == {"model", "optimizer", "train", "data"}, names
    assert {"model.d_model", "optimizer.lr", "train.global_batch", "data.tokenizer", "num_params"} <= set(names)
    assert not [n for n in names if n.startswith("data.") and n not in ("data.corpus", "data.tokenizer",
                                                                           "data.packing")], names
    expected = [k for s in ("model", "optimizer", "train") for k in flat_hparams(config) if k.split(".")[0] == s]
    assert names[:len(expected)] == expected, "section by section, each in the config's order"
