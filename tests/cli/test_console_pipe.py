"""`ar-ray run ... | head -1`: the console going away never ends the run (a stranger's driver died of a
BrokenPipeError, with no message and no status.json). The run goes on silently to its end; its ledger and
status.json are its record."""

from __future__ import annotations

import json

from helpers_targets import with_console_closed
from toys import make_toy

from ar_ray.ledger import store as ledger


def test_a_run_whose_console_goes_away_runs_to_its_end(tmp_path):
    target = make_toy(tmp_path / "target", "[target]\nenv = { TOY_SLEEP = '0.05' }\n")
    run_dir = tmp_path / "run"
    first, returncode, errors = with_console_closed(tmp_path, [
        "run", "--target", str(target), "--run-dir", str(run_dir), "--max-experiments", "3", "--trainers", "1",
        "--cpus-per-trainer", "1", "--proposers", "1", "--acceptance", "greedy", "--baseline-repeats", "1"])
    assert first.startswith("run dir: "), first
    assert returncode == 0, errors
    assert "BrokenPipeError" not in errors
    status = json.loads((run_dir / "status.json").read_text())
    df = ledger.load(run_dir)
    assert status["state"] == "finished" and len(df) >= 4  # the baseline and the 3 experiments, all recorded
    assert (df.status == "ok").all()
