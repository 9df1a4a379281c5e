"""The best named the same way wherever it is shown: the target as shipped is `the target as shipped, e00000,
version 0` in the end-of-run summary of a fresh run and of a resumed one, and in the status line (a stranger saw
`(baseline, version 0)` in one run's summary and `(e00000, version 0)` in another's); the status line's queue says
which part is new candidates and which follow-up runs."""

from __future__ import annotations

import io
import json

from rich.console import Console
from toys import make_toy

from ar_ray.cli.main import print_summary
from ar_ray.cli.progress import Progress, render
from ar_ray.engine.config import RunConfig
from ar_ray.engine.run import execute
from ar_ray.ledger import store as ledger


def config(tmp_path, **kw) -> RunConfig:  # one candidate, worse than the target: the best stays the shipped target
    return RunConfig(target=str(tmp_path / "target"), run_dir=str(tmp_path / "run"), proposer="toys:ScriptedProposer",
                     proposer_options={"script": [[{"LR": 0.9}, "worse"]]}, proposers=1, queue_depth=1, trainers=1,
                     max_experiments=1, acceptance="greedy", **kw)


def text(renderable) -> str:
    out = io.StringIO()
    Console(file=out, width=400).print(renderable)
    return " ".join(out.getvalue().split())


def summary_text(s: dict) -> str:
    out = io.StringIO()
    print_summary(Console(file=out, width=400), s)
    return " ".join(out.getvalue().split())


def test_the_shipped_target_is_named_the_same_in_fresh_and_resumed_runs(ray_local, tmp_path):
    make_toy(tmp_path / "target", "")
    (tmp_path / "run").mkdir()
    fresh = execute(config(tmp_path), Progress(tmp_path / "run", Console(file=io.StringIO()), live=False))
    df = ledger.load(tmp_path / "run")
    assert fresh["best_version"] == 0 and (df.decision == "discard").sum() == 1, df[["experiment_id", "decision"]]
    first = df[df.role == "baseline"].experiment_id.iloc[0]
    named = f"(the target as shipped, {first}, version 0)"
    assert named in summary_text(fresh), summary_text(fresh)
    status = text(render(json.loads((tmp_path / "run" / "status.json").read_text())))
    assert f"(the target as shipped, {first}, v0)" in status, status
    assert "queued 0 new + 0 follow-up" in status, status

    resumed = execute(config(tmp_path, resume=True))  # the same best, restored from the ledger
    assert resumed["best_version"] == 0 and resumed["run_id"] == fresh["run_id"]
    assert named in summary_text(resumed), summary_text(resumed)
