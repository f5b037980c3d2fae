"""Progress lines with rate and ETA, for training and for the long passes of the tools."""

from __future__ import annotations

import sys
import time


def format_duration(seconds: float) -> str:
    """`1h02m` or `4m10s`."""
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def bar(done: int, total: int, width: int = 20) -> str:
    filled = int(width * done / max(total, 1))
    return f"[{'#' * filled}{'.' * (width - filled)}]"


class Progress:
    """A one-line report of `what`: done/total, a bar, images/s and ETA, on stderr, at most every
    `every` seconds (and always when forced)."""

    def __init__(self, what: str, total: int, every: float = 2.0):
        self.what, self.total, self.every = what, total, every
        self.start = self.last = time.time()

    def update(self, done: int, force: bool = False) -> None:
        now = time.time()
        if not force and now - self.last < self.every:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = format_duration((self.total - done) / max(rate, 1e-9))
        print(
            f"{self.what}: {done:,}/{self.total:,} {bar(done, self.total)} {rate:,.0f} img/s ETA {eta}",
            file=sys.stderr,
            flush=True,
        )
