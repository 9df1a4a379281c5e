"""bench/gpu_duty.py, which bench/gpu_check.sh runs on a GPU: back-to-back runs on one real Trainer, their rows in a
real ledger, the time breakdown and duty cycle read from the ledger's columns. Here on CPU with a toy target whose
phases last known minimum times (it sleeps)."""

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_duty.py"
spec = importlib.util.spec_from_file_location("gpu_duty", SCRIPT)
duty = importlib.util.module_from_spec(spec)
spec.loader.exec_module(duty)

TRAIN = textwrap.dedent("""\
    import time
    time.sleep(0.5)                      # start-up: imports, data, model
    for k in range(1, 6):
        print(f"step {k} | loss {4.0 - k / 2:.3f} | lr 0.01 | {k * 20:.1f}% done", flush=True)
        time.sleep(0.2)                  # training
    time.sleep(0.4)                      # evaluation
    print("val_bpb: 1.2345", flush=True)
    time.sleep(0.3)                      # teardown
""")
TOML = textwrap.dedent("""\
    [target]
    name = "toy-duty"
    editable = ["train.py"]
    command = "{python} train.py"
    metric = "val_bpb"
    budget_seconds = 1
    progress_pattern = '\\| loss (?P<loss>\\S+) \\|.*\\| (?P<percent>[\\d.]+)% done'
""")


def test_summarize_counts_null_phases_as_none_and_projects_with_the_rest_as_measured():
    rows = [
        {"status": "ok", "started_at": 100.0, "ended_at": 140.0, "startup_seconds": 5.0, "train_seconds": 30.0,
         "eval_seconds": 2.0, "teardown_seconds": 1.0},
        # a target that prints no progress lines: startup and eval are null, the whole run counts as training
        {"status": "ok", "started_at": 141.0, "ended_at": 180.0, "startup_seconds": None, "train_seconds": 36.0,
         "eval_seconds": math.nan, "teardown_seconds": None},
    ]
    s = duty.summarize(rows, project=300)
    assert s["wall_seconds"] == 80.0 and s["train_seconds"] == 66.0 and s["eval_seconds"] == 2.0
    assert s["duty"] == pytest.approx(68 / 80) and s["startup_seconds"] == 5.0 and s["other_seconds"] == 12.0
    assert s["projected_duty"] == pytest.approx((300 + 1) / (300 + 1 + 6))
    with pytest.raises(ValueError):
        duty.summarize([])


def test_gpu_check_step_4_runs_two_runs_back_to_back_and_reports_their_breakdown_from_the_ledger(tmp_path):
    """bench/gpu_check.sh as a device call runs it, step 4 only, with the toy as its target on a CPU trainer: two
    runs on one real Trainer, their rows in a real ledger; the breakdown and duty table go to the log, gpu_duty.json
    to $OUT, and the script's exit status is the runs' (0: both ok)."""
    target = tmp_path / "target"
    target.mkdir()
    (target / "train.py").write_text(TRAIN)
    (target / "ar-ray.toml").write_text(TOML)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AR_", "GPU_CHECK_"))}
    env.update(OUT=str(tmp_path), PYTHON=sys.executable, GPU_CHECK_DEVICE="cpu", GPU_CHECK_STEPS="4",
               GPU_CHECK_TARGET=str(target), GPU_CHECK_DUTY_SECONDS="1", AR_CACHE_DIR=str(tmp_path / "cache"),
               TMPDIR=str(tmp_path))
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    log = (tmp_path / "gpu_check.log").read_text()
    assert proc.returncode == 0 and log == proc.stdout, proc.stdout + proc.stderr
    assert "== 4. two back-to-back runs" in log and "(1 s budget each)" in log
    assert "== 1." not in log and "== 3." not in log  # the steps not asked for
    got = json.loads((tmp_path / "gpu_duty.json").read_text())
    rows, s = got["rows"], got["summary"]
    assert [r["experiment_id"] for r in rows] == ["duty-1", "duty-2"] and all(r["status"] == "ok" for r in rows)
    assert all(r["metric"] == pytest.approx(1.2345) for r in rows)
    for r in rows:  # each phase lasts at least what the toy sleeps in it (the log is polled every 0.1 s)
        assert r["startup_seconds"] >= 0.45 and r["train_seconds"] >= 0.6
        assert r["eval_seconds"] >= 0.25 and r["teardown_seconds"] >= 0.15
        assert r["run_seconds"] >= r["startup_seconds"] + r["train_seconds"] + r["eval_seconds"] - 0.01
    assert rows[1]["started_at"] >= rows[0]["ended_at"]  # one trainer: the second run after the first
    wall = rows[1]["ended_at"] - rows[0]["started_at"]
    busy = sum(r["train_seconds"] + r["eval_seconds"] for r in rows)
    assert s["runs"] == 2 and s["ok"] == 2 and s["wall_seconds"] == pytest.approx(wall)
    assert s["duty"] == pytest.approx(busy / wall) and 0 < s["duty"] < 1 and s["projected_duty"] > s["duty"]
    assert f"duty cycle of 2 back-to-back runs: {s['duty']:.1%}" in log and "| duty-2 | ok | 1.234500 |" in log
    assert "projected at a 300 s budget" in log
    # the rows are the ledger's: a plain pyarrow read of the run's ledger has the same breakdown
    ledger = log.split("ledger: ")[1].split()[0]
    t = pq.read_table(ledger).to_pydict()
    assert t["startup_seconds"] == pytest.approx([r["startup_seconds"] for r in rows])
