"""Rough edges a stranger met in the CLI: a folder that is no target yet, `ar-ray check` run inside a target,
Ctrl-C of `ar-ray status --watch`, `ar-ray ledger` written to a file or a pipe. No Ray here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_report import known_rows, write_run

from ar_ray.cli.main import main
from ar_ray.engine.config import default_target

pytestmark = pytest.mark.timeout(60)


def not_a_target(tmp_path: Path) -> Path:
    """A training folder as a stranger has it: no ar-ray.toml, and its script is not called train.py."""
    root = tmp_path / "my-model"
    root.mkdir()
    (root / "model.py").write_text("print('val_loss: 1.0')\n")
    return root


@pytest.mark.parametrize("command", ["run", "check"])
def test_a_folder_without_ar_ray_toml_is_sent_to_ar_ray_init(tmp_path, command):
    root = not_a_target(tmp_path)
    args = ["run", "--target", str(root), "--run-dir", str(tmp_path / "run")] if command == "run" else ["check", str(root)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code != 0
    assert "has no ar-ray.toml" in r.output and f"ar-ray init {root}" in r.output, r.output
    assert "under 'editable' in ar-ray.toml" not in r.output  # there is no such file to edit
    assert "run dir:" not in r.output and not (tmp_path / "run").exists()  # refused before the run (and Ray) began


def test_a_target_whose_editable_file_is_missing_still_says_so(tmp_path):
    root = not_a_target(tmp_path)
    (root / "ar-ray.toml").write_text('[target]\neditable = ["train.py"]\n')
    r = CliRunner().invoke(main, ["check", str(root)])
    assert r.exit_code == 1 and "editable file 'train.py' is missing" in r.output and "ar-ray init" not in r.output


CHECKABLE = """
import os, random
random.seed(int(os.environ["AR_SEED"]))
LEARNING_RATE = 0.01
print(f"val_bpb: {1.0 + random.random():.6f}")
"""


def test_check_without_an_argument_checks_the_target_folder_it_is_run_in(tmp_path, monkeypatch):
    root = tmp_path / "target"
    root.mkdir()
    (root / "train.py").write_text(textwrap.dedent(CHECKABLE))
    (root / "ar-ray.toml").write_text('[target]\neditable = ["train.py"]\nbudget_seconds = 0.3\n')
    monkeypatch.chdir(root)
    r = CliRunner().invoke(main, ["check", "--repeats", "1", "--sandbox", "none", "--log-dir", str(tmp_path / "logs")])
    assert f"checking the current folder {root}" in r.output, r.output
    assert f"folder      {root}" in r.output and str(default_target()) not in r.output  # not the bundled GPT target
    assert "check-0" in r.output  # its run ran


def test_check_without_an_argument_elsewhere_says_it_checks_the_bundled_target(tmp_path):
    from ar_ray.cli.check_cmd import default_check_target
    (tmp_path / "train.py").write_text("print(1)\n")  # a folder with a script but no ar-ray.toml is no target
    folder, why = default_check_target(tmp_path)
    assert folder == str(default_target()) and "bundled GPT target" in why and "no ar-ray.toml" in why
    (tmp_path / "ar-ray.toml").write_text("[target]\n")
    assert default_check_target(tmp_path)[0] == str(tmp_path)


def running_snapshot() -> dict:
    """status.json of a run in flight, as the driver's Progress writes it every second."""
    return {"state": "running", "run_id": "r1", "updated_at": time.time() + 3600, "elapsed": 12.0, "eta": None,
            "rungs": [], "metric": "val_bpb", "best_metric": 1.0, "best_experiment": None, "best_version": 0,
            "noise": 0.01, "acceptance": "confirm", "deterministic": False, "experiments": 1, "max_experiments": None,
            "runs_done": 3, "kept": 0, "failed": 0, "pruned": 0, "skipped": 0, "infra": 0, "by_status": {"ok": 3},
            "queued": 0, "followups": 0, "proposing": 0, "trainers": 1,
            "running": [{"trainer": "trainer-0", "experiment_id": "e00004", "description": "lower LR", "role": "screen",
                         "elapsed": 3.0}],
            "throughput_per_hour": 900.0, "spend": None, "alerts": None}


def test_ctrl_c_of_status_watch_exits_quietly_with_130(tmp_path):
    (tmp_path / "status.json").write_text(json.dumps(running_snapshot()))
    watch = subprocess.Popen([sys.executable, "-m", "ar_ray.cli.main", "status", str(tmp_path), "--watch"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        first = watch.stdout.readline()  # it is watching
        os.killpg(watch.pid, signal.SIGINT)  # a terminal's Ctrl-C
        out, err = watch.communicate(timeout=30)
    finally:
        if watch.poll() is None:
            os.killpg(watch.pid, signal.SIGKILL)
    assert first.startswith("state: running"), first + out + err
    assert watch.returncode == 130, err  # as a run stopped by Ctrl-C
    assert "Aborted" not in err and "Traceback" not in err and err.strip() == "", err


def test_ledger_to_a_file_or_pipe_keeps_each_row_on_one_line(tmp_path, monkeypatch):
    run_dir = write_run(tmp_path / "run", known_rows(tmp_path / "logs"))
    monkeypatch.delenv("COLUMNS", raising=False)
    r = CliRunner().invoke(main, ["ledger", str(run_dir)])  # stdout is not a terminal here
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert len(lines) == 1 + 12, r.output  # the header and one line per row: nothing wrapped
    row = next(line for line in lines if line.split()[:1] == ["e00006"])
    assert "confirm of e00003: lower LR to 0.3" in row, r.output
    monkeypatch.setenv("COLUMNS", "60")  # a width the user asks for is kept
    narrow = CliRunner().invoke(main, ["ledger", str(run_dir)]).output
    assert max(map(len, narrow.splitlines())) <= 60 and len(narrow.splitlines()) > 13, narrow
