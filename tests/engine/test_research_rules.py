"""Research rules on real runs (real Ray, real trainers, the mutate proposer) with the stand-in target of
bench/standin, whose true metric is known: a deterministic target, and greedy's stale winners."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

from rich.console import Console

from ar_ray.cli.progress import render, snapshot
from ar_ray.engine.config import RunConfig
from ar_ray.engine.run import execute
from ar_ray.ledger import load

STANDIN = Path(__file__).resolve().parents[2] / "bench" / "standin"


def standin(tmp_path: Path, noise: str) -> Path:
    target = tmp_path / "standin"
    shutil.copytree(STANDIN, target)
    toml = (target / "ar-ray.toml").read_text()
    (target / "ar-ray.toml").write_text(toml + f"env = {{ AR_NOISE = '{noise}', AR_RUN_SECONDS = '0.05' }}\n")
    return target


def render_text(status: dict) -> str:
    console = Console(record=True, width=200)
    console.print(render(status))
    return console.export_text()


def knobs(source: str) -> dict:
    return {n.targets[0].id: ast.literal_eval(n.value) for n in ast.parse(source).body
            if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)}


def test_a_target_that_ignores_its_seed_is_run_once_per_candidate(ray_local, tmp_path):
    notes, status = [], {}

    def on_event(kind, driver, row):
        if kind == "note":
            notes.append(row["text"])
        elif kind == "finished":
            status.update(snapshot(driver, row["state"]))

    config = RunConfig(target=str(standin(tmp_path, "0")), run_dir=str(tmp_path / "run"), max_experiments=8,
                       trainers=2, sandbox="none")
    summary = execute(config, on_event=on_event)
    df = load(tmp_path / "run")
    ran = df[df.decision != "skip"]
    assert sum("deterministic target" in n for n in notes) == 1  # said once
    assert status["deterministic"] is True and "deterministic target" in render_text(status)
    assert (ran.role == "baseline").sum() == 3  # the unmodified target's repeats, and no repeats of a new best
    assert not (ran.role == "confirm").any()  # no confirmation runs spent on a noiseless target
    assert (ran.role == "screen").sum() == 8
    # every kept candidate is strictly better than the best before it
    keeps = df[df.decision == "keep"]
    assert len(keeps) >= 1 and (keeps.metric.diff().dropna() < 0).all()
    assert summary["best_metric"] == keeps.metric.iloc[-1]


def test_greedy_never_undoes_a_kept_change(ray_local, tmp_path):
    config = RunConfig(target=str(standin(tmp_path, "0.01")), run_dir=str(tmp_path / "run"), max_experiments=24,
                       trainers=4, acceptance="greedy", sandbox="none")
    execute(config)
    df = load(tmp_path / "run")
    best = knobs((STANDIN / "train.py").read_text())
    for _, row in df[df.decision == "keep"].iterrows():
        kept = knobs(dict(row.files)["train.py"])
        changed = set(re.findall(r"(\w+) \S+ -> ", row.description))  # what this candidate itself changed
        assert changed and {k: v for k, v in kept.items() if k not in changed} == \
            {k: v for k, v in best.items() if k not in changed}, row.description
        best = kept
