"""The training console: message lines to the stream and a log file, plus a progress bar on terminals only.

The bar is redrawn in place with `\\r` and an erase-line code, so it is drawn only when the stream is a TTY: CI logs
and piped output get the plain lines alone, with no control characters, and the log file never holds the bar.
"""

import pathlib
import shutil
import sys
import time
from typing import TextIO

CLEAR = "\r\x1b[K"  # back to column 0, erase to the end of the line


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def progress_text(step: int, total: int, loss: float, tokens_per_s: float, eta_s: float | None, columns: int) -> str:
    """`[#####.....] 120/800 15% | loss 2.3104 | 7,512 tok/s | ETA 1m30s`, at most `columns - 1` characters."""
    frac = min(max(step / total, 0.0), 1.0) if total > 0 else 1.0
    tail = f" {step}/{total} {frac:.0%} | loss {loss:.4f} | {tokens_per_s:,.0f} tok/s"
    if eta_s is not None:
        tail += f" | ETA {format_duration(eta_s)}"
    # One column spare: writing into the last column makes some terminals wrap, and the next \r redraws one row low.
    width = min(columns - 1 - len(tail) - 2, 40)
    if width < 5:  # too narrow for a useful bar: show the numbers, cut to fit
        return tail.strip()[: max(columns - 1, 1)]
    filled = round(frac * width)
    return "[" + "#" * filled + "." * (width - filled) + "]" + tail


class Console:
    """Lines go to `stream` and to `log_path` (appended); `progress` draws a bar that stays below the lines.

    `enabled=False` (processes other than 0) makes every method a no-op and opens no file; `bar=False` keeps the
    output plain lines even on a terminal.
    """

    def __init__(self, log_path: pathlib.Path | None, stream: TextIO | None = None, enabled: bool = True,
                 min_interval_s: float = 0.25, bar: bool = True):
        self.enabled = enabled
        self.stream = stream or sys.stdout  # looked up now, not at import: tests and tools swap sys.stdout
        self.min_interval_s = min_interval_s
        self.tty = enabled and bar and bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar: str | None = None  # the bar on screen now, to redraw below a new line
        self._last_draw = -float("inf")
        self._log = None
        if enabled and log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = log_path.open("a", buffering=1)  # line-buffered: a crash loses at most a partial line

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self.stream.write(CLEAR + text + "\n" + self._bar)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        if self._log is not None:
            self._log.write(text + "\n")

    def progress(self, step: int, total: int, loss: float, tokens_per_s: float, eta_s: float | None) -> None:
        if not self.tty:  # the periodic log lines are the non-terminal output
            return
        now = time.monotonic()
        if step < total and now - self._last_draw < self.min_interval_s:
            return
        self._last_draw = now
        columns = shutil.get_terminal_size().columns
        self._bar = progress_text(step, total, loss, tokens_per_s, eta_s, columns)
        self.stream.write(CLEAR + self._bar)
        self.stream.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:  # leave the final bar on screen, with the prompt below it
            self.stream.write("\n")
            self.stream.flush()
            self._bar = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "Console":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
