"""Fault: in a two-process job, one process cannot read its shard of the latest checkpoint. Both processes agree
to fall back to the checkpoint before it (never one from each), the damaged one is moved aside, and the job goes
on with the losses it had."""

import json

from llm_jax.checkpoint.integrity import damage
from tests.test_multihost import _finish, _start_job


def _losses(workdir):
    return {r["step"]: r["loss"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
            if "loss" in r and "eval_loss" not in r}


def test_one_process_missing_its_shard_makes_both_fall_back_to_the_same_step(tmp_path):
    _finish(_start_job(tmp_path, 4, "--config.checkpoint.every_steps=2"))
    before = _losses(tmp_path)
    latest = tmp_path / "checkpoints" / "4"
    shard = max((p for p in (latest / "state" / "ocdbt.process_1").rglob("*") if p.is_file()),
                key=lambda p: p.stat().st_size)
    shard.write_bytes(shard.read_bytes()[:100])  # process 1's array data, cut short
    assert damage(latest, process_index=0) == [], "process 0 reads its own shards: it sees nothing wrong"
    assert damage(latest, process_index=1)

    logs = _finish(_start_job(tmp_path, 6, "--config.checkpoint.every_steps=2"))
    assert f"resumed from {tmp_path / 'checkpoints' / '2'}: step 2" in logs[0], logs[0][-3000:]
    assert "is damaged (on another process); moved it to 4.damaged-" in logs[0]
    assert [p.name.split(".")[0] for p in (tmp_path / "checkpoints").glob("*.damaged-*")] == ["4"]
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4, 6]
    after = _losses(tmp_path)
    assert sorted(after) == list(range(1, 7))
    assert {s: after[s] for s in before} == before, "steps 3 and 4 again, bitwise as the first time"
