"""NaN/Inf policy and loss-spike skipping: a skipped step keeps the old state exactly, stop names the step and
saves nothing bad, and the guard's state survives a checkpoint."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax.checkpoint.manager import Checkpointer
from llm_jax.train.guard import GuardOptions, decide, init_guard
from llm_jax.train.loop import DivergedError, train
from llm_jax.train.setup import build_run
from llm_jax.train.step import train_step
from tests.conftest import small_config


def _feed(losses, options):
    guard, skips = init_guard(options.window), []
    for loss in losses:
        skip, guard = decide(guard, jnp.float32(loss), jnp.float32(1.0), options)
        skips.append(bool(skip))
    return skips, guard


def test_a_spike_is_skipped_only_against_a_full_window():
    options = GuardOptions(spike_k=3.0, window=4)
    # The 5.0 at index 1 comes before the window is full: accepted. The 9.0 is a spike against [5, 1, 1.1, 0.9].
    skips, guard = _feed([1.0, 5.0, 1.1, 0.9, 1.0, 9.0, 1.05], options)
    assert skips == [False, False, False, False, False, True, False]
    assert int(guard["skipped"]) == 1 and int(guard["filled"]) == 6 and int(guard["streak"]) == 0
    assert 9.0 not in np.asarray(guard["losses"]), "a skipped loss must not enter the window"


def test_nonfinite_losses_are_skipped_only_with_the_skip_policy():
    losses = [1.0, float("nan"), float("inf"), 1.0]
    assert _feed(losses, GuardOptions(skip_nonfinite=True, window=2))[0] == [False, True, True, False]
    skips, guard = _feed(losses, GuardOptions(spike_k=1.0, window=2))  # stop policy: the loop ends the run
    assert skips == [False] * 4 and int(guard["filled"]) == 2, "non-finite losses never enter the window"
    _, guard = _feed([float("nan")] * 3, GuardOptions(skip_nonfinite=True, window=2))
    assert int(guard["streak"]) == 3


def _config(**train_keys):
    cfg = small_config()
    cfg.train.steps, cfg.train.log_every, cfg.checkpoint.every_steps = 12, 1, 1
    for k, v in train_keys.items():
        cfg.train[k] = v
    return cfg


def test_a_skipped_step_keeps_params_and_optimizer_state_bitwise():
    cfg = _config(nan_policy="skip")
    cfg.optimizer.warmup_steps = 0  # the first step must move the parameters
    run = build_run(cfg, jax.devices()[:1])
    batch = next(run.data.train)
    poisoned = run.state.replace(params=jax.tree.map(lambda p: p * jnp.nan, run.state.params))
    step = jax.jit(train_step)
    after, metrics = step(poisoned, batch)
    assert float(metrics["skipped"]) == 1.0
    for old, new in zip(jax.tree.leaves((poisoned.params, poisoned.opt_state)),
                        jax.tree.leaves((after.params, after.opt_state)), strict=True):
        np.testing.assert_array_equal(np.asarray(new), np.asarray(old))
    # A healthy state goes on updating, and the skip count stays in the state.
    healthy = run.state.replace(guard=after.guard)
    moved, metrics = step(healthy, next(run.data.train))
    assert float(metrics["skipped"]) == 1.0 and float(metrics["skip_streak"]) == 0.0
    assert not np.array_equal(np.asarray(jax.tree.leaves(moved.params)[0]),
                              np.asarray(jax.tree.leaves(healthy.params)[0]))
    run.data.train.close()


def _exploding(**train_keys):
    cfg = _config(**train_keys)  # Adam with a huge step size: parameters blow up, then gradients turn NaN
    cfg.optimizer.lr, cfg.optimizer.clip_norm, cfg.optimizer.warmup_steps = 1e6, 0.0, 0
    return cfg


def _all_finite(workdir, cfg):
    run = build_run(cfg, jax.devices()[:1])
    ckpt = Checkpointer(workdir, cfg.checkpoint)
    try:
        steps = ckpt.all_steps()
        for s in steps:
            state, _ = ckpt.restore(s, run.state, run.state_sharding)
            assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params)), f"step {s}"
    finally:
        ckpt.close()
        run.data.train.close()
    return steps


def test_stop_policy_names_the_step_and_never_saves_a_nan_state(tmp_path):
    with pytest.raises(DivergedError, match=r"step \d+ diverged .*train.nan_policy=skip"):
        train(_exploding(), tmp_path, jax.devices()[:1])
    steps = _all_finite(tmp_path, _exploding())
    assert steps and max(steps) < 12


def test_skip_policy_counts_skips_and_stops_after_too_many_in_a_row(tmp_path, capsys):
    with pytest.raises(DivergedError, match=r"3 updates in a row were skipped, up to step \d+"):
        train(_exploding(nan_policy="skip", max_skips_in_a_row=3), tmp_path, jax.devices()[:1])
    out = capsys.readouterr().out
    assert "update skipped" in out and "3 skipped so far" in out
    steps = _all_finite(tmp_path, _exploding(nan_policy="skip"))
    assert len(steps) >= 2, "steps whose update was skipped are saved: their state is the last good one"
