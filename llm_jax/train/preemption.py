"""SIGTERM/SIGINT: finish the current step, save a checkpoint, exit 0. All processes stop at the same step."""

import signal
import threading

import jax
import numpy as np


class StopRequest:
    """Set by SIGTERM or SIGINT; `agreed()` is true on every process once any process got a signal."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signal: int | None = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def agreed(self) -> bool:
        """Whether to stop after this step; with several processes, an all-gather makes every one agree."""
        local = self.signal is not None
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.array([local]))))

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
