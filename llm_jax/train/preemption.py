"""SIGTERM/SIGINT: finish the current step, save a checkpoint, exit 0. All processes stop at the same step.

A second signal a while after the first exits at once (a save that hangs, or a user who will not wait): that is a
kill, which the checkpoints survive (orbax only renames a step's directory into place when it is whole). Signals
within a second of the first are the same request arriving twice: Ctrl-C in a terminal reaches every process of a
local multi-process job and its launcher, which passes SIGTERM on.
"""

import os
import signal
import sys
import threading
import time

import jax
import numpy as np

SAME_REQUEST_S = 1.0


class StopRequest:
    """Set by SIGTERM or SIGINT; the loop passes `requested()` through `agree_any` every step."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signal: int | None = None
        self._first = 0.0  # when the first signal came (monotonic seconds)
        self._previous = {}
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            if time.monotonic() - self._first < SAME_REQUEST_S:
                return
            sys.stderr.write(f"\nsignal {signum} again: exiting now without a checkpoint; the complete checkpoints "
                             "are kept and the same command resumes from the last one\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.signal, self._first = signum, time.monotonic()
        sys.stderr.write(f"\nsignal {signum}: stopping after this step with a checkpoint (again, a second later, to "
                         "exit at once)\n")

    def requested(self) -> bool:
        return self.signal is not None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def agree_any(*flags: bool) -> tuple[bool, ...]:
    """Each flag true on any process, on every process (one all-gather when there are several), so that all of
    them stop or save at the same step even though signals and clocks are per process."""
    if jax.process_count() == 1:
        return flags
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.array(flags, dtype=bool))
    return tuple(bool(x) for x in np.any(gathered.reshape(-1, len(flags)), axis=0))
