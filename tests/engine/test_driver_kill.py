"""Ctrl-C of the driver mid-run: it stops cleanly, with a summary, and leaves no child behind.

(SIGKILL of the driver mid-run, then --resume: tests/engine/test_cluster.py's driver-kill test, at random moments.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

from helpers_targets import wait_for
from toys import make_toy, marker_processes

from ar_ray.ledger import store as ledger


def test_ctrl_c_stops_cleanly_with_a_summary(tmp_path):
    """Ctrl-C at a terminal signals the whole foreground process group: the driver and everything it started."""
    mark = f"toy-{uuid.uuid4().hex}"
    target = make_toy(tmp_path / "target", f"[target]\nenv = {{ TOY_SLEEP = '30', TOY_MARK = '{mark}' }}\n")
    run_dir = tmp_path / "run"
    driver = subprocess.Popen([sys.executable, "-m", "ar_ray.cli.main", "run", "--target", str(target), "--run-dir",
                               str(run_dir), "--max-experiments", "50", "--trainers", "2", "--cpus-per-trainer", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                              env={**os.environ, "RAY_ADDRESS": ""})
    try:
        wait_for(lambda: len(marker_processes(mark)) >= 2, 180, "two training children in flight")
        os.killpg(driver.pid, signal.SIGINT)
        output = driver.communicate(timeout=120)[0]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 130, output  # 128 + SIGINT: a stopped run, not a finished one (the stop is clean)
    assert "interrupted after" in output and "best val_bpb:" in output
    assert not marker_processes(mark)  # the run's children are already gone when the driver exits
    df = ledger.load(run_dir)  # consistent: nothing half-written, no row for the killed experiments
    assert not (df.status == "infra").any()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "interrupted"
