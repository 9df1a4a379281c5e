"""A tiny supervisor between a trainer actor and the training child.

    python reaper.py [--grace SECONDS] -- COMMAND...

It exists so that no process outlives an experiment, grandchildren included:
- it marks itself a child subreaper, so anything the child forks and orphans
  (even after setsid or a double fork) is re-parented to it, not to init;
- it asks the kernel for SIGTERM when its parent (the trainer actor) dies, so a
  `kill -9` of the actor still tears the tree down;
- when the child exits, or on SIGTERM/SIGINT, it kills every remaining
  descendant: SIGTERM first, SIGKILL after the grace period.
Its exit status is the child's (128 + signal number when the child was killed).

Standard library only, so it starts in a few milliseconds.
"""

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int) -> None:
    _libc.prctl(option, arg, 0, 0, 0)


def descendants(root: int) -> list[int]:
    """All live descendants of `root`, found by walking /proc parent links."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name sits in parentheses and may hold spaces: parse after the last ')'
        fields = stat[stat.rindex(b")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            out.append(pid)
            todo.append(pid)
    return out


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _reap_zombies() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_tree(grace: float) -> None:
    """TERM every descendant, wait up to `grace` s for them to go, then KILL the rest and reap them."""
    me = os.getpid()
    _signal_all(descendants(me), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap_zombies()
        live = [p for p in descendants(me) if not _is_zombie(p)]
        if not live:
            return
        time.sleep(0.05)
    while True:
        live = [p for p in descendants(me) if not _is_zombie(p)]
        if not live:
            break
        _signal_all(live, signal.SIGKILL)
        time.sleep(0.02)
        _reap_zombies()
    _reap_zombies()


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:][:1] == b"Z"
    except OSError:
        return True


def main(argv: list[str]) -> int:
    grace = 5.0
    if argv[:1] == ["--grace"]:
        grace, argv = float(argv[1]), argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: reaper.py [--grace S] -- COMMAND...", file=sys.stderr)
        return 2
    parent = os.getppid()
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the death signal was armed
        return 128 + signal.SIGTERM

    def on_stop(signum, _frame):
        # TERM the whole tree now; the alarm escalates to KILL after the grace period.
        _signal_all(descendants(os.getpid()), signal.SIGTERM)
        signal.setitimer(signal.ITIMER_REAL, grace)

    def on_alarm(_signum, _frame):
        _signal_all(descendants(os.getpid()), signal.SIGKILL)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGALRM, on_alarm)

    def child_setup():
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    try:
        child = subprocess.Popen(argv, preexec_fn=child_setup, start_new_session=True)
    except OSError as e:
        print(f"ar-ray: cannot start {argv[0]!r}: {e.strerror}", flush=True)
        return 127
    _, status = os.waitpid(child.pid, 0)  # blocking; signal handlers run in between (PEP 475)
    child.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from waiting on it again
    signal.setitimer(signal.ITIMER_REAL, 0)
    kill_tree(grace)
    code = child.returncode
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
