"""A console that may go away: `ar-ray run ... | head -3` must not end the run.

Python ignores SIGPIPE, so a write to a pipe whose reader has exited raises BrokenPipeError, wherever the write is:
in the driver's progress callback, a tracker's message, the summary. `guard_console()` wraps stdout and stderr so
that the first such error silences that stream for good (its file descriptor is pointed at /dev/null, so neither a
later write nor the interpreter's last flush fails) and the run goes on: its ledger and status.json are its record.
"""

from __future__ import annotations

import io
import os
import sys


class PipeGuard:
    """A text stream that turns a closed reader into silence."""

    def __init__(self, stream):
        self.stream = stream
        self.gone = False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self.stream.write(text)
            except BrokenPipeError:
                self._went_away()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._went_away()

    def _went_away(self) -> None:
        self.gone = True
        try:  # what is still buffered, and the interpreter's flush at exit, go to /dev/null
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self.stream.fileno())
            finally:
                os.close(devnull)
        except (OSError, ValueError, io.UnsupportedOperation):
            pass

    def isatty(self) -> bool:
        return not self.gone and self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    def writable(self) -> bool:
        return True

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name):  # encoding, errors, buffer, ...: the wrapped stream's
        return getattr(self.stream, name)


def guard_console() -> None:
    """Wrap sys.stdout and sys.stderr (once) so that a console going away never ends this process."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, PipeGuard):
            setattr(sys, name, PipeGuard(stream))
