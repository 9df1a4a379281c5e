"""Watch a run's log while it trains: its training curve, its progress (for the stall rule), where its time went,
and stopping it when it is hopeless (`--prune`).

The trainer's wait loop calls `poll()` every POLL seconds: the log is read as it grows (new bytes only),
matched with the target's `progress_pattern` and `metric_pattern`, and each new point checked against the
candidate's prune limits (`ar_ray/search/pruning.py`). A run that logs gigabytes costs at most MAX_BYTES of
reading. Every line is timed by the poll that first read it (so to within POLL seconds):
- `first_progress_at`: the first progress line (training has started);
- `last_progress_at`: the line that first reported the run's highest progress (training has ended when it is 100 %);
- `metric_at`: the last line the metric pattern matched (the metric was printed);
- `output_at`: the last time the log grew (the progress of a target without a progress pattern).
`on_progress(now, progress)` is called for each progress event (ar_ray/timeouts.py `Stall`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from ar_ray.search import pruning
from trainers import outcome

POLL = 0.1  # seconds between reads of the log (only what it gained is read)
MAX_BYTES = 64 * 2**20  # log bytes parsed per run; a run that writes more keeps the curve it had by then


class CurveWatch:
    def __init__(self, log: Path, pattern: str | None, limits: tuple[tuple[float, float], ...] = (),
                 on_prune: Callable[[], None] = lambda: None, metric_pattern: str | None = None,
                 on_progress: Callable[[float, float | None], None] = lambda now, progress: None):
        self.log, self.limits, self.on_prune, self.on_progress = log, limits, on_prune, on_progress
        self.rx = pruning.compile_pattern(pattern) if pattern else None
        self.metric_rx = re.compile(metric_pattern, re.MULTILINE) if metric_pattern else None
        self.points: list[tuple[float, float]] = []
        self.reason: str | None = None  # set once the run was pruned
        self.first_progress_at: float | None = None
        self.last_progress_at: float | None = None
        self.metric_at: float | None = None
        self.output_at: float | None = None
        self._offset, self._rest = 0, b""

    @property
    def progress(self) -> float | None:
        return max((p for p, _ in self.points), default=None)

    def poll(self, judge: bool = True, now: float | None = None) -> None:
        """Read what the log gained, add its points, and (`judge`) prune when the limits say so."""
        if self._offset >= MAX_BYTES:
            return
        now = time.monotonic() if now is None else now
        try:
            with outcome.open_regular(self.log) as f:  # a run that swapped its log for a FIFO must not block us
                f.seek(self._offset)
                chunk = f.read(MAX_BYTES - self._offset)
        except OSError:
            return
        if not chunk:
            return
        self._offset += len(chunk)
        self.output_at = now
        if self.rx is None:
            self.on_progress(now, None)
        *lines, self._rest = (self._rest + chunk).split(b"\n")
        if lines:
            self._lines(b"\n".join(lines).decode(errors="replace"), now)
        if judge and self.limits and self.reason is None and (why := pruning.verdict(self.points, self.limits)):
            self.reason = why
            self.on_prune()

    def _lines(self, text: str, now: float) -> None:
        if self.metric_rx is not None and self.metric_rx.search(text):
            self.metric_at = now
        if self.rx is None:
            return
        before = self.progress
        new = pruning.parse_points(text, self.rx)
        if not new:
            return
        self.points += new
        if self.first_progress_at is None:
            self.first_progress_at = now
        if before is None or self.progress > before:
            self.last_progress_at = now
            self.on_progress(now, self.progress)

    def finish(self, now: float | None = None) -> pruning.Curve:
        """The run has ended: read the rest, and return the curve, downsampled."""
        self.poll(judge=False, now=now)  # a run that has ended is judged by its metric, not pruned now
        if self._rest:  # a last line without a newline
            self._lines(self._rest.decode(errors="replace"), time.monotonic() if now is None else now)
            self._rest = b""
        return pruning.downsample(self.points)
