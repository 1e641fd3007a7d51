"""Progress with ETA, and a graceful stop on Ctrl-C / SIGTERM. No dependencies beyond the stdlib.

``Progress`` redraws one line in place on a terminal (stderr) and stays silent otherwise, so log
files only get train.py's regular log lines (which carry their own ETA). ``GracefulStop`` turns
the first SIGINT/SIGTERM into a flag the training loop checks at safe points; a second one
abandons at once.
"""

from __future__ import annotations

import signal
import sys
import time


def format_seconds(seconds: float) -> str:
    """62 → '1m02s', 3725 → '1h02m', 9.4 → '9s'."""
    seconds = int(round(max(seconds, 0)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def eta(elapsed: float, done: int, remaining: int) -> float:
    """Seconds left at the average rate so far (inf before the first unit is done)."""
    return elapsed / done * remaining if done else float("inf")


class Progress:
    """``label  done/total [#####.....] 50%  3.1/s  eta 1m20s`` on a terminal, else nothing."""

    def __init__(self, total: int, label: str, done: int = 0, stream=None, interval: float = 0.25):
        self.total, self.label, self.first = total, label, done
        self.stream = stream or sys.stderr
        self.enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval, self.start, self.last_draw, self.width = interval, time.perf_counter(), 0.0, 0

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self.last_draw < self.interval and done < self.total):
            return
        self.last_draw = now
        elapsed, finished = now - self.start, done - self.first
        fraction = done / self.total if self.total else 1.0
        bar = "#" * int(20 * fraction)
        line = (f"{self.label} {done}/{self.total} [{bar:.<20}] {100 * fraction:3.0f}%"
                f"  {finished / elapsed if elapsed else 0:.1f}/s"
                f"  eta {format_seconds(eta(elapsed, finished, self.total - done)) if finished else '?'}")
        self.stream.write("\r" + line.ljust(self.width))
        self.stream.flush()
        self.width = len(line)

    def clear(self) -> None:
        """Erase the line (before printing a log line, or when done)."""
        if self.enabled and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


class StopRequested(Exception):
    """Raised at a safe point after a SIGINT/SIGTERM; ``signum`` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Abandoned(BaseException):
    """A second signal: stop right now, whatever is running (not caught by ``except Exception``)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class GracefulStop:
    """Context manager: the first SIGINT/SIGTERM only records itself (``check()`` then raises
    ``StopRequested``); a second raises ``Abandoned`` wherever the program is. Nothing is printed
    from inside the handler (a print there could interrupt another print of the same stream)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self.previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise Abandoned(signum)
        self.signum = signum

    def __enter__(self):
        for s in self.SIGNALS:
            self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        return False

    def check(self) -> None:
        if self.signum is not None:
            raise StopRequested(self.signum)


def exit_stopped(e: StopRequested, what: str):
    """End the process for a stop request: one line on stderr, exit status 128 + signal."""
    print(f"stopped by {signal.Signals(e.signum).name} {what}", file=sys.stderr)
    sys.exit(128 + e.signum)


def exit_diverged(e: Exception, saved_iteration, out):
    """A nan/inf loss: the weights are lost, but the last checkpoint (if any) is good."""
    print(f"error: {e}; the weights are no longer usable and were not saved. Lower --outer-lr or "
          f"--inner-lr and start again" + (
              f", or continue from the last good checkpoint (iteration {saved_iteration}) with  "
              f"python train.py --resume {out} --outer-lr SMALLER --allow-config-change"
              if saved_iteration else ""), file=sys.stderr)
    sys.exit(2)
