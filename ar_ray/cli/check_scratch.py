"""`ar-ray check`'s temporary folder, and its stop signals: the folder never outlives the check (a SIGKILLed
check's is removed by the next), and a stopped check ends its runs' processes before the folder goes."""

from __future__ import annotations

import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path

import click

SCRATCH_PREFIX = "ar-ray-check-"  # the check's temporary folder, in the temp dir
GRACE_SECONDS = 5.0  # a run's children get this long after SIGTERM before SIGKILL (the trainer's default)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """The `ar-ray check` process got one of STOP_SIGNALS (a KeyboardInterrupt: no `except Exception` stops it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum, _frame):
    _defer_signals()  # a second Ctrl-C must not cut the cleanup short
    raise Interrupted(signum)


def _defer_signals() -> None:
    for s in STOP_SIGNALS:  # (a handler, not SIG_IGN: children started meanwhile get the default again at exec)
        signal.signal(s, lambda *_: None)


@contextmanager
def scratch_folder(end_children: bool = False):
    """A new temporary folder for the check's runs, named after this process; removed when the block ends,
    however it ends. `end_children` (the `ar-ray check` process, where every descendant is the check's): when
    the block ends by an exception (Interrupted), every descendant process is ended first (SIGTERM, SIGKILL after
    GRACE_SECONDS), so that nothing writes in the folder while it goes. Folders of checks that were SIGKILLed
    (their process is gone) are removed first."""
    from trainers.cleanup import owned_prefix, remove_tree, sweep_orphans
    sweep_orphans(tempfile.gettempdir(), SCRATCH_PREFIX)
    path = Path(tempfile.mkdtemp(prefix=owned_prefix(SCRATCH_PREFIX)))
    try:
        yield path
    except Interrupted:  # (only ever raised by a signal to the `ar-ray check` process)
        if end_children:
            from trainers.reaper import kill_tree
            _defer_signals()
            kill_tree(GRACE_SECONDS)
        raise
    finally:
        if stuck := remove_tree(str(path)):
            click.echo(f"ar-ray check: could not remove {', '.join(stuck[:3])}", err=True)
