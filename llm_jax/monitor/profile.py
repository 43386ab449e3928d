"""`--config.profile.steps=N`: a jax.profiler trace of N steps, for TensorBoard's profile tab.

The trace goes to <workdir>/tensorboard/plugins/profile/<time>/, where `tensorboard --logdir=<workdir>` finds it
(with the tensorboard-plugin-profile package installed). Only process 0 traces: processes on one machine would
write the same file name.
"""

import pathlib

import jax
import ml_collections


class Profiler:
    def __init__(self, c: ml_collections.ConfigDict, logdir: pathlib.Path, enabled: bool):
        """Traces steps c.start_step .. c.start_step + c.steps - 1 (counted from 1, as in the logs)."""
        self.first, self.last = c.start_step, c.start_step + c.steps - 1
        self.logdir, self.enabled = logdir, enabled and c.steps > 0
        self.active = False

    def before(self, step: int) -> None:
        """Called before step `step` (counted from 1) is dispatched."""
        if self.enabled and step == self.first:
            jax.profiler.start_trace(str(self.logdir))
            self.active = True

    def after(self, step: int, outputs) -> bool:
        """Called after step `step` is dispatched; True when the trace was just written."""
        if self.active and step >= self.last:
            return self.stop(outputs)
        return False

    def stop(self, outputs=None) -> bool:
        if not self.active:
            return False
        jax.block_until_ready(outputs)  # the trace must hold the traced steps' device work
        jax.profiler.stop_trace()
        self.active = False
        return True
