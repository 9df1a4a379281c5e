"""Confirm mode on a real local Ray with a noisy toy: a resume finishes the confirmations that were open, and
the best metric is one number in `ar-ray best`, status.json, the summary and the ledger."""

from __future__ import annotations

import io
import json
import re

import pytest
from click.testing import CliRunner
from rich.console import Console
from toys import NOISY_TRAIN, make_toy

from ar_ray.cli.main import main
from ar_ray.cli.progress import Progress
from ar_ray.engine.config import RunConfig
from ar_ray.engine.driver import Driver
from ar_ray.engine.run import execute, restore
from ar_ray.ledger import store as ledger
from ar_ray.ledger.store import Ledger
from ar_ray.search.policy import Policy
from ar_ray.target import load_target

SCRIPT = "toys:ScriptedProposer"
CONCLUDED = {"keep", "reject", "conflict"}



def config(tmp_path, **kw) -> RunConfig:
    return RunConfig(target=str(tmp_path / "target"), run_dir=str(tmp_path / "run"), proposer=SCRIPT,
                     proposer_options={"script": [[{"LR": 0.3}, "real gain"]]}, proposers=1, queue_depth=1,
                     max_experiments=1, **kw)


def undecided(df) -> list[str]:
    """Screened candidates whose group has no concluding row."""
    screened = df[(df.role == "screen") & (df.decision == "screened")].experiment_id
    return [g for g in screened if not df[(df.group_id == g) & (df.role != "screen")].decision.isin(CONCLUDED).any()]


@pytest.mark.parametrize("stop_at", ["screened", "confirming"])
def test_a_resume_finishes_the_confirmations_that_were_open(ray_local, tmp_path, stop_at):
    """Stopped at the screened candidate's row (its confirmation runs only queued) or at its first confirmation
    run (the second one running, killed by the stop): the resume restores the open group with the run it has
    and runs the missing ones, so the candidate is decided; the new best is then measured by fresh repeats,
    and a restore builds its reference from those, not from the runs that decided the accept."""
    make_toy(tmp_path / "target", "", train=NOISY_TRAIN)

    def stop(kind, driver, row):
        if kind == "row" and row["decision"] == stop_at and row["role"] in ("screen", "confirm"):
            raise KeyboardInterrupt  # what Ctrl-C does

    first = execute(config(tmp_path, trainers=1), stop)
    before = ledger.load(tmp_path / "run")
    assert first["interrupted"] and undecided(before), before[["experiment_id", "role", "decision", "group_id"]]
    gid = undecided(before)[0]
    had = before[(before.group_id == gid) & (before.role == "confirm")]
    assert len(had) == (stop_at == "confirming")

    summary = execute(config(tmp_path, trainers=2, resume=True))
    df = ledger.load(tmp_path / "run")
    assert undecided(df) == []
    runs = df[(df.group_id == gid) & (df.role == "confirm")]
    # the run it had counts: two confirmation runs in all, not two more
    assert len(runs) == 2 and runs.decision.iloc[-1] == "keep" and runs.group_n.iloc[-1] == 2
    assert runs.group_mean.iloc[-1] == pytest.approx(runs.metric.mean())
    assert df[df.edit_hash == runs.edit_hash.iloc[0]].seed.is_unique  # no seed replayed across the resume
    assert summary["kept"] == 1 and summary["best_version"] == 1 and not summary["interrupted"]
    repeats = df[(df.role == "baseline") & (df.base_version == 1)]
    assert len(repeats) == 3 and summary["best_metric"] == pytest.approx(repeats.metric.mean())

    t = load_target(str(tmp_path / "target"))
    fresh = Driver(t, Ledger(tmp_path / "run"), summary["run_id"], [], [], Policy(config(tmp_path).policy(), t.direction),
                   queue_depth=1)
    restore(fresh, str(tmp_path / "run"))
    assert sorted(fresh.policy.best_metrics) == sorted(repeats.metric)
    assert fresh.best.metric == pytest.approx(summary["best_metric"]) and not fresh.followups


def test_one_best_metric_and_the_keep_rows_diff(ray_local, tmp_path):
    """After a confirm-mode keep and the new best's fresh repeats: `ar-ray best`, status.json, the summary and
    the ledger's last best_metric all give the mean of those repeats; the keep row carries the change it kept."""
    make_toy(tmp_path / "target", "", train=NOISY_TRAIN)
    (tmp_path / "run").mkdir()
    summary = execute(config(tmp_path, trainers=2),  # what `ar-ray run` shows and writes (status.json)
                      Progress(tmp_path / "run", Console(file=io.StringIO()), live=False))
    df = ledger.load(tmp_path / "run")
    repeats = df[(df.role == "baseline") & (df.base_version == 1)]
    assert summary["kept"] == 1 and len(repeats) == 3
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    out = CliRunner().invoke(main, ["best", str(tmp_path / "run")], catch_exceptions=False).output
    shown = float(re.search(r"^best val_bpb (\S+)", out, re.MULTILINE).group(1))
    assert summary["best_metric"] == pytest.approx(repeats.metric.mean())
    assert status["best_metric"] == summary["best_metric"] == df.best_metric.iloc[-1]
    assert shown == pytest.approx(summary["best_metric"], abs=5e-7), out
    keep = df[df.decision == "keep"].iloc[0]
    assert keep.role == "confirm" and isinstance(keep["diff"], str), keep  # the last confirmation run decided it
    assert "-LR = 0.5" in keep["diff"] and "+LR = 0.3" in keep["diff"]
    assert keep.lines_added == 1 and keep.lines_removed == 1
