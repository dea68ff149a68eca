"""Progress of patches scored: a bar on a terminal, a log line every few seconds elsewhere."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


class Progress:
    """Counts patches; ``update(n)`` after each block."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None, every_s: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        self.total, self.label, self.every_s = total, label, every_s
        self.done = 0
        self.start = self._last = time.monotonic()
        interactive = self.stream.isatty()
        self._bar = (
            tqdm(total=total, desc=label, unit="patch", file=self.stream, dynamic_ncols=True)
            if interactive
            else None
        )

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._log(now)

    def _log(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        percent = 100.0 * self.done / self.total if self.total else 100.0
        print(
            f"{self.label}: {self.done}/{self.total} patches ({percent:.0f}%), {rate:.0f}/s, ETA {eta:.0f} s",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            self._log(time.monotonic())
