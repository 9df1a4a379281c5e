"""A rebased win in the lineage: the version's metric is the merged code's (its rebase run), not the candidate's own
run on the older best, and `ar-ray best`, the report and the git export say so (a stranger saw `e00002 0.850000` in
the lineage while `ar-ray show e00002` gave 0.95)."""

from __future__ import annotations

import json
import subprocess

from click.testing import CliRunner

from ar_ray.cli.main import main
from ar_ray.cli.report import _lineage_html
from ar_ray.ledger import analysis as A
from ar_ray.ledger.lineage import export_git
from ar_ray.ledger.store import Ledger, load

V0 = {"train.py": "LR = 0.5\nWIDTH = 8\n"}
V1 = {"train.py": "LR = 0.3\nWIDTH = 8\n"}
V2 = {"train.py": "LR = 0.3\nWIDTH = 12\n"}  # e00002's change (WIDTH, made from V0) merged onto V1


def rows() -> list[dict]:
    """Greedy mode, as the policy writes it: e00001 and e00002 both made from the target; e00001 is kept first, so
    e00002 (a win over the target) is stale: screened, re-applied onto e00001's code and run again as e00003,
    which is kept."""
    r = dict(run_id="greedy-rebase", status="ok")
    return [
        dict(r, experiment_id="e00000", role="baseline", group_id="e00000", proposer="baseline", decision="baseline",
             metric=1.0, best_metric=1.0, base_version=0, best_version=0, files=V0, edit_hash="h0", ended_at=1.0),
        dict(r, experiment_id="e00001", role="screen", proposer="mutate-0", decision="keep", parent_id="e00000",
             base_version=0, best_version=1, metric=0.9, best_metric=0.9, files=V1, edit_hash="h1",
             description="lower LR", ended_at=2.0),
        dict(r, experiment_id="e00002", role="screen", proposer="mutate-0", decision="screened", parent_id="e00000",
             base_version=0, best_version=1, metric=0.95, best_metric=0.9, edit_hash="h2", files=V0 | {"train.py":
             "LR = 0.5\nWIDTH = 12\n"}, description="wider model", ended_at=3.0),
        dict(r, experiment_id="e00003", role="rebase", group_id="e00002", proposer="policy", decision="keep",
             parent_id="e00001", base_version=1, best_version=2, metric=0.85, best_metric=0.85, files=V2,
             edit_hash="h3", description="rebase of e00002: wider model", ended_at=4.0),
        dict(r, experiment_id="e00004", role="screen", proposer="mutate-0", decision="discard", parent_id="e00002",
             base_version=2, best_version=2, metric=0.99, best_metric=0.85, edit_hash="h4", description="narrower",
             ended_at=5.0),
    ]


def write(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"run_id": "greedy-rebase", "target": str(tmp_path / "target"),
                                              "metric": "val_bpb", "direction": "min"}))
    Ledger(run).append(rows())
    return run


def test_the_lineage_names_the_run_its_metric_comes_from(tmp_path):
    run = write(tmp_path)
    df = load(run)
    lin = A.lineage(df).set_index("node")
    assert lin.loc["e00002", "ran_as"] == "e00003" and lin.loc["e00002", "metric"] == 0.85
    assert lin.loc["e00001", "ran_as"] is None and lin.loc["e00000", "ran_as"] is None
    out = CliRunner().invoke(main, ["best", str(run)], catch_exceptions=False).output
    assert out.startswith("best val_bpb 0.850000 from e00002 (rebased as e00003) (version 2)\n"), out
    assert "  e00002 (rebased as e00003)  0.850000  wider model" in out and "  e00001  0.900000  lower LR" in out, out
    assert "e00002 (rebased as e00003)" in _lineage_html(A.lineage(df), "val_bpb")
    assert A.summary(df, A.run_info(run, df))["best_experiment"] == "e00002 (rebased as e00003)"
    # the run the label names is where the figure is; the candidate's own run shows its own, on the older best
    show = lambda e: CliRunner().invoke(main, ["show", str(run), e], catch_exceptions=False).output  # noqa: E731
    assert "val_bpb 0.850000 " in show("e00003") and "val_bpb 0.950000 " in show("e00002")


def test_the_git_export_says_so_too(tmp_path):
    run = write(tmp_path)
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    commits = export_git(run, "ar-ray/best", repo=repo)
    assert [c.node for c in commits] == ["e00000", "e00001", "e00002"]
    message = subprocess.run(["git", "-C", str(repo), "log", "-1", "--format=%B", "ar-ray/best"], capture_output=True,
                             text=True, check=True).stdout
    assert "ar-ray-experiment: e00002 (rebased as e00003) (decided by e00003)" in message, message
