"""Small CLI fixes from a user review: `best` on a failed baseline and with --force, `show --lines`, the sweep
grid's flag values, `sweep --analyze` on a run that is not a sweep, and the error text of a failed run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_report import V0, known_rows, row, write_run

from ar_ray.cli import readers as cli_report
from ar_ray.cli.main import main
from ar_ray.ledger import analysis as A
from ar_ray.ledger.lineage import GitExportError, export_git
from ar_ray.ledger.store import Ledger, load
from trainers import outcome


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, env=env).stdout


def failed_baseline(tmp_path: Path) -> Path:
    """A run whose unmodified target crashed: the driver recorded the row and stopped."""
    return write_run(tmp_path / "failed", [row(0, role="baseline", group_id="e00000", proposer="baseline",
                                                status="crash", decision="baseline", files=V0, base_version=0,
                                                best_version=0, returncode=1, error="RuntimeError: boom")])


# ---------------------------------------------------------------------------
# ar-ray best
# ---------------------------------------------------------------------------


def test_best_of_a_run_whose_baseline_failed_says_so_and_exports_nothing(tmp_path):
    run = failed_baseline(tmp_path)
    df = load(run)
    assert not A.has_baseline(df) and A.best_path(df).empty and A.best_files(df) is None
    problem = A.baseline_problem(df, run)
    assert problem == (f"{run} has no finished baseline yet: no run of the unmodified target succeeded "
                       f"(e00000: crash; see `ar-ray ledger {run}`)")
    for command in (main, None):  # the `ar-ray` group, and the command itself
        args = ["best", str(run), "--export", str(tmp_path / "out")]
        r = CliRunner().invoke(main, args) if command else CliRunner().invoke(cli_report.best, args[1:])
        assert r.exit_code == 1 and "has no finished baseline yet" in r.output, r.output
        assert "nan" not in r.output and not (tmp_path / "out").exists()
    r = CliRunner().invoke(cli_report.best, [str(run)])
    assert r.exit_code == 1 and "no run of the unmodified target succeeded (e00000: crash" in r.output
    with pytest.raises(GitExportError, match="no run of the unmodified target succeeded"):
        export_git(run, "b", repo=tmp_path)


def test_best_of_an_empty_run_says_no_baseline_ran_yet(tmp_path):
    (tmp_path / "ledger").mkdir()
    assert A.baseline_problem(load(tmp_path), tmp_path) == (
        f"{tmp_path} has no finished baseline yet: the unmodified target has not finished a run "
        f"(see `ar-ray status {tmp_path}`)")
    r = CliRunner().invoke(cli_report.best, [str(tmp_path)])
    assert r.exit_code == 1 and "has not finished a run" in r.output


def test_best_shows_the_lineage_and_exports(tmp_path):
    run = write_run(tmp_path / "run", known_rows(tmp_path / "logs"))
    assert A.baseline_problem(load(run), run) is None
    r = CliRunner().invoke(cli_report.best, [str(run), "--export", str(tmp_path / "out")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert r.output.startswith("best val_bpb 0.905000 from e00009 (version 2)\nlineage:\n  e00000  1.000000")
    assert (tmp_path / "out" / "train.py").exists()


def test_best_git_force_replaces_an_existing_branch(tmp_path):
    repo = tmp_path / "repo"
    target = repo / "target"
    target.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (target / "train.py").write_text(V0["train.py"])
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "init")
    git(repo, "branch", "ar-ray/best")  # an old branch of that name, pointing at main
    run = write_run(tmp_path / "run", known_rows(tmp_path / "logs"), target=target)
    r = CliRunner().invoke(cli_report.best, [str(run), "--git", "ar-ray/best"])
    assert r.exit_code == 1 and "already exists" in r.output and "pass --force to replace it" in r.output
    r = CliRunner().invoke(cli_report.best, [str(run), "--git", "ar-ray/best", "--force"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "branch ar-ray/best: 2 commit(s), one per kept change" in r.output
    assert git(repo, "rev-list", "--count", "main..ar-ray/best").strip() == "2"
    for alone in (["--force"], ["--repo", str(repo)]):
        r = CliRunner().invoke(cli_report.best, [str(run), *alone])
        assert r.exit_code == 2 and "--force and --repo go with --git BRANCH" in r.output


# ---------------------------------------------------------------------------
# ar-ray show
# ---------------------------------------------------------------------------


def test_show_refuses_a_negative_line_count(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "e00000.txt").write_text("line\n")
    run = write_run(tmp_path / "run", known_rows(logs))
    r = CliRunner().invoke(main, ["show", str(run), "e00000", "--lines", "-1"])
    assert r.exit_code == 2 and "Invalid value for '--lines'" in r.output, r.output
    r = CliRunner().invoke(main, ["show", str(run), "e00000", "--lines", "0"], catch_exceptions=False)
    assert r.exit_code == 0 and "(last 0 lines)" in r.output


# ---------------------------------------------------------------------------
# ar-ray sweep
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--depths", "0,2"], "'0,2': every value must be a positive integer (got 0), e.g. --depths 2,3,4"),
    (["--depths", "2.5"], "every value must be a positive integer (got 2.5)"),
    (["--depths", "inf"], "every value must be a positive integer (got inf)"),
    (["--budget-tokens", "-5"], "'-5': every value must be a positive integer (got -5), e.g. --budget-tokens"),
    (["--budgets", "0"], "'0': every value must be a positive number (got 0), e.g. --budgets 10,20"),
    (["--budgets", "nan"], "every value must be a number"),
    (["--depths", "two"], "every value must be a number"),
])
def test_sweep_grid_values_must_be_positive(tmp_path, args, message):
    r = CliRunner().invoke(main, ["sweep", "--target", str(tmp_path / "t"), "--run-dir", str(tmp_path / "run"), *args])
    assert r.exit_code == 2 and message in " ".join(r.output.split()), r.output
    assert not (tmp_path / "run").exists()


def test_sweep_analyze_refuses_a_run_that_is_not_a_sweep(tmp_path):
    run = write_run(tmp_path / "run", known_rows(tmp_path / "logs"))
    before = sorted(p.name for p in run.iterdir())
    r = CliRunner().invoke(main, ["sweep", "--analyze", str(run)])
    out = " ".join(r.output.split())
    assert r.exit_code == 1 and f"{run} is not a sweep (its run.json has no sweep spec: it was made by `ar-ray run`)" in out
    assert "nothing was analyzed or written" in out
    assert sorted(p.name for p in run.iterdir()) == before  # no sweep.json
    # no run.json and no sweep rows: not a sweep either
    (run / "run.json").unlink()
    r = CliRunner().invoke(main, ["sweep", "--analyze", str(run)])
    assert r.exit_code == 1 and "its ledger holds no sweep runs" in " ".join(r.output.split())
    assert not (run / "sweep.json").exists()


def test_sweep_analyze_of_a_sweep_without_runs_yet_still_answers(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"run_id": "x", "kind": "sweep", "sweep": {}}))
    Ledger(tmp_path).append([row(0, role="baseline", status="ok", metric=1.0)])
    r = CliRunner().invoke(main, ["sweep", "--analyze", str(tmp_path)])
    assert r.exit_code == 1 and "no analysis: no sweep runs in this ledger" in r.output
    assert (tmp_path / "sweep.json").exists()


def test_sweep_analyze_of_a_folder_without_ledger_names_the_sweep_flag(tmp_path):
    r = CliRunner().invoke(main, ["sweep", "--analyze", str(tmp_path)])
    assert r.exit_code == 1 and "pass the folder given to `ar-ray sweep --run-dir`" in " ".join(r.output.split())


# ---------------------------------------------------------------------------
# trainers/outcome.py: what a failed run's error says
# ---------------------------------------------------------------------------


def test_no_metric_names_the_pattern():
    pattern = r"^loss:\s*(\S+)"
    text = "step 1\nstep 2\n---\nval_bpb: 1.0\n"
    status = outcome.classify(0, False, text, outcome.parse_metric(text, pattern))
    assert status == "no_metric"
    err = outcome.error_tail(text, status=status, returncode=0, metric_pattern=pattern)
    assert err == "no line matched metric_pattern '^loss:\\s*(\\S+)'; the output ends with:\n" + text.rstrip()
    assert outcome.error_tail("", status=status, returncode=0, metric_pattern=pattern) == \
        "no line matched metric_pattern '^loss:\\s*(\\S+)'; the run printed nothing"
    assert outcome.error_tail(text) == text.rstrip()  # as before, without what the trainer knows


@pytest.mark.parametrize("code, said", [
    (-11, "killed by SIGSEGV (signal 11)"),
    (139, "killed by SIGSEGV (signal 11, exit code 139)"),
    (-9, "killed by SIGKILL (signal 9)"),
    (1, "exited with code 1"),
])
def test_a_run_killed_by_a_signal_names_it(code, said):
    status = outcome.classify(code, False, "", None)
    assert outcome.error_tail("", status=status, returncode=code) == f"{said}; the run printed nothing"
    if code != 1:
        assert outcome.error_tail("Segmentation fault\n", status=status, returncode=code) == \
            f"{said}; the output ends with:\nSegmentation fault"
    assert outcome.error_tail("Traceback (most recent call last):\nValueError: x\n", status="crash", returncode=1) == \
        "Traceback (most recent call last):\nValueError: x"  # a plain exit with output: the output says it


def test_signal_of():
    assert [outcome.signal_of(c) for c in (None, 0, 1, 2, -15, 143, 128, 255)] == [None, None, None, None, 15, 15,
                                                                                    None, None]
