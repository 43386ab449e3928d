"""A step watchdog: a process whose steps stop finishing (a hung peer blocks every collective; a stuck input
pipeline or file system) exits with an error instead of waiting forever.

jax.distributed's heartbeats catch a peer that dies or is stopped; they do not catch one that is alive but stuck
(its heartbeat thread still runs). The watchdog does: if no step finishes within `runtime.step_timeout_s`, the
process says so and exits, and the other processes then see it stop sending heartbeats and end too.
"""

import os
import sys
import threading
import time
from collections.abc import Callable


class Watchdog:
    def __init__(self, timeout_s: float, on_timeout: Callable[[str], None] | None = None):
        """`timeout_s` <= 0 turns it off. Armed by the first `beat()` (the first step includes compilation)."""
        self.timeout_s, self.on_timeout = timeout_s, on_timeout or _exit
        self._last: float | None = None
        self._what = ""
        self._stop = threading.Event()
        self._thread = None
        if timeout_s > 0:
            self._thread = threading.Thread(target=self._watch, name="step-watchdog", daemon=True)
            self._thread.start()

    def beat(self, what: str = "") -> None:
        """Progress: a step finished (`what` says where the run is, for the message)."""
        self._last, self._what = time.monotonic(), what

    def pause(self) -> None:
        """Not watching (until the next beat): e.g. the final evaluation and sample."""
        self._last = None

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout_s / 4)):
            last = self._last
            if last is not None and time.monotonic() - last > self.timeout_s:
                self.on_timeout(f"no progress for {self.timeout_s:g} s after {self._what} (runtime.step_timeout_s):"
                                " a peer process or the input pipeline is stuck; ending this process so the job "
                                "stops; run the same command again to resume from the last checkpoint")
                return

    def close(self) -> None:
        self._stop.set()


def _exit(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    os._exit(3)  # the main thread is blocked in a collective: only a hard exit gets out
