"""The exit status of a run or sweep that a signal stopped: 128 + the signal, as a shell reports a process the
signal killed (130 for Ctrl-C, 143 for SIGTERM), so that a script tells a finished run (exit 0) from a stopped one.
The stop itself stays clean: the summary is printed and the run can be resumed.

The engine turns SIGTERM into the same KeyboardInterrupt as Ctrl-C while its loop runs (and puts its own SIGTERM
handler in place for that time), so only Ctrl-C is seen here: a run reported interrupted without a SIGINT having
arrived was stopped by SIGTERM.
"""

from __future__ import annotations

import signal
import threading


class StopSignal:
    """Notes a SIGINT (then raises KeyboardInterrupt, as Python's own handler does) while the block runs."""

    def __init__(self):
        self.sigint = False
        self._previous = None

    def _on_sigint(self, signum, frame):
        self.sigint = True
        raise KeyboardInterrupt

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():  # (signal handlers: main thread only)
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def exit_code(self, interrupted: bool) -> int:
        """0 for a run that ended by itself; 130 after Ctrl-C; 143 after SIGTERM."""
        if not interrupted:
            return 0
        return 128 + int(signal.SIGINT if self.sigint else signal.SIGTERM)
