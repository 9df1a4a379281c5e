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

import pytest
from helpers_targets import wait_for
from toys import make_toy, marker_processes

from trainers import sandbox

pytestmark = pytest.mark.timeout(300)

# The training child double-forks a grandchild into its own session that ignores SIGTERM, then trains forever.
IMMUNE_TRAIN = '''\
import os, signal, time
LR = 0.5
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
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


@pytest.mark.parametrize("mode", ["none", "bwrap"])
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_stopped_run_leaves_no_process_even_a_sigterm_immune_grandchild(tmp_path, mode, how):
    if mode == "bwrap" and (problem := sandbox.bwrap_problem()):
        pytest.skip(problem)
    mark, driver = start_run(tmp_path, mode)
    try:
        # the baseline's child and its double-forked grandchild
        wait_for(lambda: len(marker_processes(mark)) >= 2, 180, "the training child and its grandchild")
        if how == "ctrl-c":
            os.killpg(driver.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground group
        else:
            driver.send_signal(signal.SIGTERM)  # `kill <driver pid>`
        output = driver.communicate(timeout=120)[0]
        # bounded wait: the reaper's grace is 5 s
        wait_for(lambda: not marker_processes(mark), 30, f"no process of the run left (output:\n{output[-3000:]})")
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        for pid in marker_processes(mark):  # never leave one behind for the next test
            os.kill(pid, signal.SIGKILL)


# The first baseline repeat fails at once; the others train with a SIGTERM-immune grandchild until the run aborts.
ABORT_TRAIN = '''\
import os, signal, sys, time
LR = 0.5
if os.environ["AR_SEED"] == "0":
    time.sleep(8)  # the other repeats are in flight with their grandchildren by now
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
        seen = 0
        while driver.poll() is None:  # how many of the run's processes lived at once before the abort
            seen = max(seen, len(marker_processes(mark)))
            time.sleep(0.2)
        output = driver.stdout.read()
        assert driver.returncode != 0 and "the unmodified target failed" in output, output[-2000:]
        assert seen >= 4, seen  # two repeats in flight, each with its immune grandchild
        wait_for(lambda: not marker_processes(mark), 30, "no process of the aborted run left")
    finally:
        if driver.poll() is None:
            driver.kill()
        for pid in marker_processes(mark):
            os.kill(pid, signal.SIGKILL)
