"""Every stop path of `ar-ray run` leaves no process of a run behind, in each sandbox mode, even a grandchild that
double-forked into a session of its own and ignores SIGTERM (Ray SIGKILLs a trainer's direct children when the
trainer's worker exits, so the reaper may never get to escalate)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from helpers_targets import process_env, wait_for
from toys import make_toy, marker_processes

from trainers import sandbox

pytestmark = pytest.mark.timeout(300)

# The training child double-forks a grandchild into its own session that ignores SIGTERM, then trains forever.
# The grandchild says so with a file in the run dir, which the test reads to know it is there.
IMMUNE_TRAIN = '''\
import os, signal, time
LR = 0.5
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        open("immune-grandchild", "w").close()
        while True:
            time.sleep(3600)
    os._exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(3600)
'''


def start_run(tmp_path, mode: str):
    mark = f"toy-{uuid.uuid4().hex}"
    target = make_toy(tmp_path / "target", f"[target]\nenv = {{ TOY_MARK = '{mark}' }}\n", train=IMMUNE_TRAIN)
    driver = subprocess.Popen([sys.executable, "-m", "ar_ray.cli.main", "run", "--target", str(target), "--run-dir",
                               str(tmp_path / "run"), "--max-experiments", "5", "--trainers", "1",
                               "--cpus-per-trainer", "1", "--sandbox", mode],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                              env={**os.environ, "RAY_ADDRESS": ""})
    return mark, driver


def run_dirs(mark: str) -> dict[str, set[Path]]:
    """AR_SEED -> the run dirs (AR_RUN_DIR) of the live processes carrying `mark` (the trainer sets both)."""
    out: dict[str, set[Path]] = {}
    for pid in marker_processes(mark):
        env = process_env(pid) or {}
        if b"AR_SEED" in env and b"AR_RUN_DIR" in env:
            out.setdefault(env[b"AR_SEED"].decode(), set()).add(Path(env[b"AR_RUN_DIR"].decode()))
    return out


def seeds_with_immune_grandchild(mark: str) -> set[str]:
    return {seed for seed, dirs in run_dirs(mark).items() if any((d / "immune-grandchild").exists() for d in dirs)}


@pytest.mark.parametrize("mode", ["none", "bwrap"])
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_stopped_run_leaves_no_process_even_a_sigterm_immune_grandchild(tmp_path, mode, how):
    if mode == "bwrap" and (problem := sandbox.bwrap_problem()):
        pytest.skip(problem)
    mark, driver = start_run(tmp_path, mode)
    try:
        # the baseline's child and its double-forked grandchild
        wait_for(lambda: seeds_with_immune_grandchild(mark), 180, "the training child and its grandchild")
        if how == "ctrl-c":
            os.killpg(driver.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground group
        else:
            driver.send_signal(signal.SIGTERM)  # `kill <driver pid>`
        output = driver.communicate(timeout=120)[0]
        assert driver.returncode == (130 if how == "ctrl-c" else 143), output[-3000:]  # 128 + the signal
        # bounded wait: the reaper's grace is 5 s
        wait_for(lambda: not marker_processes(mark), 30, f"no process of the run left (output:\n{output[-3000:]})")
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        for pid in marker_processes(mark):  # never leave one behind for the next test
            os.kill(pid, signal.SIGKILL)


# The first baseline repeat fails once the test has seen the others in flight, each with its SIGTERM-immune
# grandchild (the test then writes `go` into its run dir); the others train until the run aborts.
ABORT_TRAIN = '''\
import os, signal, sys, time
LR = 0.5
if os.environ["AR_SEED"] == "0":
    deadline = time.monotonic() + 120
    while not os.path.exists("go") and time.monotonic() < deadline:
        time.sleep(0.05)
    sys.exit("the unmodified target fails on this seed")
''' + IMMUNE_TRAIN.split("LR = 0.5\n", 1)[1]


@pytest.mark.parametrize("mode", ["none", "bwrap"])
def test_an_aborted_run_leaves_no_process_of_the_runs_still_in_flight(tmp_path, mode):
    if mode == "bwrap" and (problem := sandbox.bwrap_problem()):
        pytest.skip(problem)
    mark = f"toy-{uuid.uuid4().hex}"
    target = make_toy(tmp_path / "target", f"[target]\nenv = {{ TOY_MARK = '{mark}' }}\n", train=ABORT_TRAIN)
    driver = subprocess.Popen([sys.executable, "-m", "ar_ray.cli.main", "run", "--target", str(target), "--run-dir",
                               str(tmp_path / "run"), "--max-experiments", "5", "--trainers", "3",
                               "--cpus-per-trainer", "0.5", "--sandbox", mode],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "RAY_ADDRESS": ""})
    try:
        seen, released = 0, False
        while driver.poll() is None:  # how many of the run's processes lived at once before the abort
            seen = max(seen, len(marker_processes(mark)))
            if not released and len(seeds_with_immune_grandchild(mark) - {"0"}) >= 2:
                for run_dir in run_dirs(mark).get("0", ()):  # two other repeats in flight: seed 0 may fail now
                    (run_dir / "go").touch()
                    released = True
            time.sleep(0.1)
        output = driver.stdout.read()
        assert released, output[-2000:]  # the abort came with two other repeats' immune grandchildren alive
        assert driver.returncode != 0 and "the unmodified target failed" in output, output[-2000:]
        assert seen >= 4, seen  # two repeats in flight, each with its immune grandchild
        wait_for(lambda: not marker_processes(mark), 30, "no process of the aborted run left")
    finally:
        if driver.poll() is None:
            driver.kill()
        for pid in marker_processes(mark):
            os.kill(pid, signal.SIGKILL)
