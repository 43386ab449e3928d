"""`llm-jax bench --checkpoint` runs the real save/restore path, reports every figure, and cleans up after itself."""

import json
import math

from llm_jax.train.checkpoint_bench import bench_checkpoint
from tests.conftest import small_config

FIELDS = ("params", "step_time_s", "step_min_s", "step_max_s", "step_during_save_s", "steps_during_save",
          "save_block_s", "save_block_pct_of_step", "first_save_block_s", "save_tail_s", "save_s", "save_mb_per_s",
          "restore_s", "restore_mb_per_s", "checkpoint_mb", "state_mb", "dd_mb", "dd_mb_per_s")


def test_checkpoint_bench_reports_every_figure_and_leaves_nothing(tmp_path):
    lines: list[str] = []
    bench_checkpoint(small_config(), str(tmp_path), steps=2, print_fn=lines.append)
    result = json.loads(lines[-1])
    missing = [k for k in FIELDS if k not in result]
    assert not missing, f"JSON line lacks {missing}"
    bad = {k: v for k, v in result.items() if not (math.isfinite(v) and v > 0)}
    assert not bad, f"figures must be positive and finite: {bad}"
    # The checkpoint holds at least params + optimizer state (compressed or not, it is not near-empty).
    assert result["checkpoint_mb"] > 0.5 * result["state_mb"], result
    assert list(tmp_path.iterdir()) == [], "the benchmark must delete what it wrote"
