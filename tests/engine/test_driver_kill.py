"""SIGKILL of the driver mid-run: every completed row survives, no child is orphaned, and --resume continues."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

from click.testing import CliRunner
from helpers_targets import wait_for
from toys import make_toy, marker_processes

from ar_ray.cli.main import main
from ar_ray.ledger import store as ledger


def ledger_rows(run_dir) -> int:
    try:
        return ledger.read_table(run_dir).num_rows
    except ledger.LedgerError:
        return 0


def test_sigkill_of_the_driver_loses_no_row_and_resume_continues(tmp_path, ray_local):
    mark = f"toy-{uuid.uuid4().hex}"
    target = make_toy(tmp_path / "target", f"[target]\nenv = {{ TOY_SLEEP = '0.4', TOY_MARK = '{mark}' }}\n")
    run_dir = tmp_path / "run"
    env = {**os.environ, "RAY_ADDRESS": ""}  # its own embedded Ray, not the test's
    driver = subprocess.Popen([sys.executable, "-m", "ar_ray.cli.main", "run", "--target", str(target), "--run-dir",
                               str(run_dir), "--max-experiments", "200", "--trainers", "2", "--cpus-per-trainer", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        wait_for(lambda: ledger_rows(run_dir) >= 6, 180, "six ledger rows")
        wait_for(lambda: marker_processes(mark), 60, "a training child in flight")
    finally:
        driver.send_signal(signal.SIGKILL)
        output = driver.communicate()[0]
    assert driver.returncode == -signal.SIGKILL

    # every completed row is intact and readable with no project code
    before = ledger.load(run_dir)
    assert len(before) >= 6 and before.experiment_id.is_unique
    import pandas as pd
    assert len(pd.read_parquet(run_dir / "ledger")) == len(before)
    printed = {line.split()[0] for line in output.splitlines() if line.startswith("e0")}
    assert printed and printed <= set(before.experiment_id)  # whatever the driver reported was already on disk
    # the experiments in flight died with it: no training child outlives the run
    wait_for(lambda: not marker_processes(mark), 60, "the orphaned training children to be gone")

    # what was in flight is in the journal, with no row yet
    in_flight = {p.stem for p in (run_dir / "inflight").glob("e*.json")}  # new candidates (not confirmations)
    assert not in_flight & set(before.experiment_id)

    # resume: completed work is not re-run, in-flight work is re-queued, the best is restored, no duplicate rows
    def screens(df):
        return int(((df.role == "screen") & (df.decision != "skip")).sum())

    def first_baselines(df):
        return int(((df.role == "baseline") & (df.base_version == 0)).sum())

    done_before = screens(before)
    r = CliRunner().invoke(main, ["run", "--resume", str(run_dir), "--max-experiments", str(done_before + 4),
                                  "--trainers", "2"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    after = ledger.load(run_dir)
    assert after.experiment_id.is_unique and after.seq.is_unique
    assert first_baselines(after) == first_baselines(before) == 3  # the baseline was not re-run
    assert after.iloc[: len(before)].experiment_id.tolist() == before.experiment_id.tolist()  # nothing rewritten
    assert screens(after) == done_before + 4
    assert in_flight <= set(after.experiment_id)  # re-run under their own ids
    assert not list((run_dir / "inflight").glob("e*.json"))
    new = after.iloc[len(before):]
    # the resumed run went on from the restored best and noise estimate, not from the target as shipped (the
    # confirmations left open by the kill are finished first, and the candidates in flight re-run, on the code they
    # were made from)
    reopened = (new.group_id.isin(set(before.group_id)) & new.role.isin(["confirm", "rebase"])) | \
        new.experiment_id.isin(in_flight)
    assert (new[(new.decision != "skip") & ~reopened].base_version >= before.best_version.max()).all()
    assert new[new.decision != "skip"].noise.notna().all() and new.best_version.min() >= before.best_version.max()


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
    assert driver.returncode == 0, output
    assert "interrupted after" in output and "best val_bpb:" in output
    assert not marker_processes(mark)  # the run's children are already gone when the driver exits
    df = ledger.load(run_dir)  # consistent: nothing half-written, no row for the killed experiments
    assert not (df.status == "infra").any()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "interrupted"
