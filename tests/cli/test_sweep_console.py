"""`ar-ray sweep ... | head -1`: the console going away never ends the sweep (as for `ar-ray run`,
tests/cli/test_console_pipe.py). The sweep goes on silently to its end; its ledger and sweep.json are its record.
And a sweep stopped by Ctrl-C says so by its exit status (130), as `ar-ray run` does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

from helpers_targets import wait_for, with_console_closed
from toys import make_toy, marker_processes

from ar_ray.ledger import store as ledger


def test_a_sweep_whose_console_goes_away_runs_to_its_end(tmp_path):
    target = make_toy(tmp_path / "target", "[target]\nenv = { TOY_SLEEP = '0.05' }\n")
    run_dir = tmp_path / "sweep"
    first, returncode, errors = with_console_closed(tmp_path, [
        "sweep", "--target", str(target), "--run-dir", str(run_dir), "--knob", "width=8,12", "--repeats", "1",
        "--trainers", "1", "--cpus-per-trainer", "1", "--bootstrap", "10"])
    assert first.startswith("sweep dir: "), first
    assert returncode == 0, errors
    assert "BrokenPipeError" not in errors
    df = ledger.load(run_dir)
    assert len(df[df.role == "sweep"]) == 2 and (df.status == "ok").all()  # both grid points ran and were recorded
    assert (run_dir / "sweep.json").exists()  # the analysis after the runs was written too


def test_a_sweep_stopped_by_ctrl_c_exits_130_after_its_clean_stop(tmp_path):
    mark = f"toy-{uuid.uuid4().hex}"
    target = make_toy(tmp_path / "target", f"[target]\nenv = {{ TOY_SLEEP = '30', TOY_MARK = '{mark}' }}\n")
    sweep = subprocess.Popen([sys.executable, "-m", "ar_ray.cli.main", "sweep", "--target", str(target), "--run-dir",
                              str(tmp_path / "sweep"), "--knob", "width=8,12", "--repeats", "1", "--trainers", "1",
                              "--cpus-per-trainer", "1", "--bootstrap", "10"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                             env={**os.environ, "RAY_ADDRESS": ""})
    try:
        wait_for(lambda: marker_processes(mark), 120, "a run of the sweep in flight")
        os.killpg(sweep.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground group
        output = sweep.communicate(timeout=120)[0]
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    assert sweep.returncode == 130, output[-3000:]  # 128 + SIGINT: stopped, not finished
    assert "interrupted after" in output and "continue with: ar-ray sweep --resume" in output, output[-3000:]
    assert not marker_processes(mark)
