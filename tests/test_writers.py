"""Run files in a workdir: an earlier run is moved aside, never overwritten or mixed with the new one."""

from llm_jax.monitor.writers import archive_previous_run


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
