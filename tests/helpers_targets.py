"""Toy research targets for tests: a folder with train.py + prepare.py (+ ar-ray.toml), built in tmp_path.

Each toy train.py is ordinary Python whose behaviour the test controls. Processes a
toy target starts are found again through a unique marker in their environment
(AR_TEST_MARK), read from /proc, so a test can prove that none survive.
"""

from __future__ import annotations

import os
import socket
import textwrap
import time
import uuid
from pathlib import Path

from ar_ray.target import Target, load_target
from ar_ray.types import Candidate

DEFAULT_PREPARE = "# read-only part of the toy target\nVOCAB = 42\n"


def make_target(root: Path, train: str, prepare: str = DEFAULT_PREPARE, toml: str | None = None,
                **overrides) -> Target:
    """Write a toy target folder and load it; `overrides` go to load_target (None values are ignored)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.py").write_text(textwrap.dedent(train))
    (root / "prepare.py").write_text(textwrap.dedent(prepare))
    if toml is not None:
        (root / "ar-ray.toml").write_text(textwrap.dedent(toml))
    return load_target(root, **overrides)


def candidate(target: Target, train: str | None = None, eid: str | None = None, **kw) -> Candidate:
    """A candidate running the target's train.py, or `train` (dedented) in its place."""
    files = target.read_editable()
    if train is not None:
        files = {**files, "train.py": textwrap.dedent(train)}
    return Candidate(experiment_id=eid or f"exp-{uuid.uuid4().hex[:8]}", base_version=0, files=files, **kw)


def local_ray(**resources):
    """A real local Ray of the given (fake) resources, shut down after: the body of a module-scoped fixture."""
    import ray
    if ray.is_initialized():
        ray.shutdown()
    ray.init("local", include_dashboard=False, log_to_driver=False, configure_logging=False, **resources)
    yield ray
    ray.shutdown()


def scoped_environ(values: dict[str, str], drop: tuple[str, ...] = ()):
    """os.environ with `values` set and `drop` removed, restored after: the body of a module-scoped fixture."""
    saved = {k: os.environ.get(k) for k in [*values, *drop]}
    for k in drop:
        os.environ.pop(k, None)
    os.environ.update(values)
    yield values
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def new_mark() -> str:
    return f"ar-test-{uuid.uuid4().hex}"


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2:][:1].decode()


def ppid_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return int(stat[stat.rindex(b")") + 2:].split()[1])


def alive(pid: int) -> bool:
    """Running or sleeping (a zombie has finished: it only waits to be reaped)."""
    state = _state(pid)
    return state is not None and state not in ("Z", "X")


def pids_with_env(needle: str) -> list[int]:
    """Live processes (not this one) whose environment contains `needle`."""
    raw = needle.encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if raw in env and alive(int(entry)):
            out.append(int(entry))
    return out


def process_env(pid: int) -> dict[bytes, bytes] | None:
    """A process's environment as /proc shows it (None once it is gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
    except OSError:
        return None


def marked_pids(mark: str) -> list[int]:
    """Live processes whose environment holds AR_TEST_MARK=<mark>."""
    return pids_with_env(f"AR_TEST_MARK={mark}\0")


def wait_for(predicate, timeout: float = 15.0, what: str = "condition"):
    """Poll until `predicate()` is truthy (a bounded wait for an event); fail with `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


# -- train.py building blocks ------------------------------------------------------------------

# Forks a process that ignores SIGTERM and sleeps forever; it writes its pid to `pidfile` first.
SLEEPER_FN = '''
import os, signal, sys, time

def sleeper(pidfile, setsid_double_fork=False):
    """Fork a process that ignores SIGTERM and sleeps forever; returns at once in the caller."""
    if os.fork():
        return
    try:
        if setsid_double_fork:
            os.setsid()
            if os.fork():
                os._exit(0)
            if os.fork():
                os._exit(0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with open(pidfile + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(pidfile + ".tmp", pidfile)
        while True:
            time.sleep(3600)
    finally:
        os._exit(0)

def wait_file(path):
    while not os.path.exists(path):
        time.sleep(0.01)
'''


def free_ports(n: int) -> list[int]:
    """n TCP ports free on loopback right now (for a Ray head of a test's own)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def with_console_closed(tmp_path, args: list[str]) -> tuple[str, int, str]:
    """`ar-ray ARGS | head -1`: a real ar-ray process whose stdout reader goes away after the first line.
    Returns (that line, its exit status, its stderr). Its own embedded Ray (RAY_ADDRESS unset)."""
    import signal
    import subprocess
    import sys
    read, write = os.pipe()
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "ar_ray.cli.main", *args], stdout=write, stderr=err,
                                start_new_session=True, env={**os.environ, "RAY_ADDRESS": ""})
    os.close(write)
    try:
        with os.fdopen(read) as out:
            first = out.readline()  # said before Ray starts; then the reader is gone, as `| head -1` leaves
        returncode = proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return first, returncode, (tmp_path / "stderr.txt").read_text()
