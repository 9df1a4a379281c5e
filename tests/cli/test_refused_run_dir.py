"""A run refused after Ray started leaves no run dir behind (a stranger's `--trainers 2` on a 2-CPU machine left
runs/two with run.json and an empty ledger/), and a folder holding a ledger is refused before `run dir:` is said."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner
from test_report import known_rows, write_run
from toys import make_toy

from ar_ray.cli.main import main


def run(*args):
    return CliRunner().invoke(main, ["run", *map(str, args)])


@pytest.fixture
def toy(tmp_path):
    return make_toy(tmp_path / "target", "[target]\nenv = { TOY_SLEEP = '0.05' }\n")


def test_a_run_refused_by_the_cluster_plan_leaves_no_run_dir(ray_local, tmp_path, toy):
    run_dir = tmp_path / "runs" / "two"  # neither folder exists yet
    r = run("--target", toy, "--run-dir", run_dir, "--trainers", "5")  # the module's Ray has 4 (fake) GPUs
    assert r.exit_code == 1 and "the cluster has 4" in r.output, r.output
    assert "run dir:" in r.output  # it got as far as Ray
    assert not (tmp_path / "runs").exists()  # nor the folder above it, made for it


def test_a_folder_that_existed_is_kept_as_it_was(ray_local, tmp_path, toy):
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("the user's\n")
    r = run("--target", toy, "--run-dir", run_dir, "--trainers", "5")
    assert r.exit_code == 1 and "the cluster has 4" in r.output, r.output
    assert sorted(os.listdir(run_dir)) == ["notes.txt"] and (run_dir / "notes.txt").read_text() == "the user's\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run("--target", toy, "--run-dir", empty, "--trainers", "5")
    assert r.exit_code == 1 and empty.is_dir() and os.listdir(empty) == []


def test_a_folder_with_a_ledger_is_refused_before_run_dir_is_said(tmp_path, toy, monkeypatch):
    import ar_ray.engine.cluster as cluster
    monkeypatch.setattr(cluster, "connect", lambda *a, **k: pytest.fail("Ray was started"))
    run_dir = write_run(tmp_path / "my1", known_rows(tmp_path / "logs"), target=toy)
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    r = run("--target", toy, "--run-dir", run_dir)
    assert r.exit_code == 1 and f"{run_dir} already holds a run's ledger; pass --resume" in r.output
    assert "run dir:" not in r.output
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before  # nothing touched
    r = run("--resume", tmp_path / "nothing-here")  # --resume of a folder with no run: also before "run dir:"
    assert r.exit_code == 1 and "holds no run" in r.output and "run dir:" not in r.output


def test_the_undo_keeps_rows_and_what_another_run_made_beside_it(tmp_path):
    from ar_ray.engine.run import _unmade
    run_dir = tmp_path / "runs" / "a" / "mine"
    undo = _unmade(run_dir)  # nothing exists yet: runs/, runs/a/ and the run dir are this run's to make
    (run_dir / "ledger").mkdir(parents=True)
    (tmp_path / "runs" / "other").mkdir()  # another run started beside it meanwhile
    undo()
    assert not (tmp_path / "runs" / "a").exists() and (tmp_path / "runs" / "other").is_dir()
    undo = _unmade(run_dir)
    write_run(run_dir, known_rows(tmp_path / "logs"))  # a run with rows is their record: never removed
    undo()
    assert len(os.listdir(run_dir / "ledger")) >= 1 and (run_dir / "run.json").exists()
