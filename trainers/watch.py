"""Watch a run's log while it trains: collect its training curve and stop it when it is hopeless (`--prune`).

The log is read as it grows (new bytes only, every POLL seconds), matched with the target's
`progress_pattern`, and each new point checked against the candidate's prune limits
(`ar_ray/search/pruning.py`). A run that logs gigabytes costs at most MAX_BYTES of reading.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from ar_ray.search import pruning
from trainers import outcome

POLL = 0.5  # seconds between reads of the log
MAX_BYTES = 64 * 2**20  # log bytes parsed per run; a run that writes more keeps the curve it had by then


class CurveWatch:
    def __init__(self, log: Path, pattern: str, limits: tuple[tuple[float, float], ...] = (),
                 on_prune: Callable[[], None] = lambda: None):
        self.log, self.rx, self.limits, self.on_prune = log, pruning.compile_pattern(pattern), limits, on_prune
        self.points: list[tuple[float, float]] = []
        self.reason: str | None = None  # set once the run was pruned
        self._offset, self._rest = 0, b""
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self, judge: bool = True) -> None:
        """Read what the log gained, add its points, and (`judge`) prune when the limits say so."""
        if self._offset >= MAX_BYTES:
            return
        try:
            with outcome.open_regular(self.log) as f:  # a run that swapped its log for a FIFO must not block us
                f.seek(self._offset)
                chunk = f.read(MAX_BYTES - self._offset)
        except OSError:
            return
        self._offset += len(chunk)
        *lines, self._rest = (self._rest + chunk).split(b"\n")
        if lines:
            self.points += pruning.parse_points(b"\n".join(lines).decode(errors="replace"), self.rx)
        if judge and self.limits and self.reason is None and (why := pruning.verdict(self.points, self.limits)):
            self.reason = why
            self.on_prune()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="curve-watch", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._done.wait(POLL):
            self.poll()

    def finish(self) -> pruning.Curve:
        """Stop watching (the run has ended), read the rest, and return the curve, downsampled."""
        self._done.set()
        if self._thread:
            self._thread.join()
        self.poll(judge=False)  # a run that has ended is judged by its metric, not pruned now
        if self._rest:  # a last line without a newline
            self.points += pruning.parse_points(self._rest.decode(errors="replace"), self.rx)
        return pruning.downsample(self.points)
