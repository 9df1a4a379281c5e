"""`ar-ray best --git` / `export-git` say which repository received the branch, and refuse to write into a repository
around the target folder that tracks none of its files (a stranger's target copied into another checkout had its
branch land in that checkout, with paths like byo/nanoGPT/train.py, said nowhere)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from click.testing import CliRunner
from test_report import V0, V2, known_rows, write_run

from ar_ray.cli.main import main


def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=check, env=env)


def has_branch(repo: Path, branch: str) -> bool:
    return git(repo, "rev-parse", "--verify", "-q", f"refs/heads/{branch}", check=False).returncode == 0


def layout(tmp_path: Path, track_target: bool, own_repo: bool = False) -> tuple[Path, Path, Path]:
    """An outer repository with the target in byo/nanoGPT (tracked by it, or not); the run of that target."""
    outer = tmp_path / "outer"
    target = outer / "byo" / "nanoGPT"
    target.mkdir(parents=True)
    git(outer, "init", "-q", "-b", "main")
    (outer / "README").write_text("the outer project\n")
    for rel, text in V0.items():
        (target / rel).write_text(text)
    git(outer, "add", "README", *(["byo"] if track_target else []))
    git(outer, "commit", "-q", "-m", "outer")
    if own_repo:
        git(target, "init", "-q", "-b", "main")
        git(target, "add", "-A")
        git(target, "commit", "-q", "-m", "target")
    run = write_run(tmp_path / "run", known_rows(tmp_path / "logs"), target=target)
    return outer, target, run


def best(*args) -> object:
    return CliRunner().invoke(main, ["best", *map(str, args)])


def test_a_target_the_outer_repository_does_not_track_is_refused_unless_repo_names_it(tmp_path):
    outer, target, run = layout(tmp_path, track_target=False)
    r = best(run, "--git", "ar-best")
    assert r.exit_code == 1, r.output
    assert f"the repository around it, {outer}, tracks none of its files" in r.output
    assert f"Pass --repo {outer}" in r.output and f"git -C {target} init" in r.output
    assert not has_branch(outer, "ar-best")
    r = CliRunner().invoke(main, ["export-git", str(run), "ar-best"])  # the same refusal
    assert r.exit_code == 1 and "tracks none of its files" in r.output and not has_branch(outer, "ar-best")
    r = best(run, "--git", "ar-best", "--repo", outer)  # said on purpose: written, and said where
    assert r.exit_code == 0, r.output
    assert "branch ar-best: 3 commit(s), one per kept change" in r.output  # the target's files first: HEAD lacks them
    assert f"in the git repository {outer}, with the target's files under byo/nanoGPT/" in r.output
    assert git(outer, "show", "ar-best:byo/nanoGPT/train.py").stdout == V2["train.py"]


def test_a_subfolder_of_a_project_is_exported_into_the_project_and_said_so(tmp_path):
    outer, target, run = layout(tmp_path, track_target=True)
    r = best(run, "--git", "ar-best")
    assert r.exit_code == 0, r.output
    assert f"in the git repository {outer}, with the target's files under byo/nanoGPT/" in r.output
    assert "the repository around it received the branch" in r.output
    assert f"git -C {outer} log ar-best" in r.output
    assert git(outer, "show", "ar-best:byo/nanoGPT/train.py").stdout == V2["train.py"]
    r = CliRunner().invoke(main, ["export-git", str(run), "ar-best2"])
    assert r.exit_code == 0 and f"in the git repository {outer}, with the target's files under byo/nanoGPT/" in r.output


def test_a_target_with_a_repository_of_its_own_gets_the_branch_even_inside_another(tmp_path):
    outer, target, run = layout(tmp_path, track_target=False, own_repo=True)
    r = best(run, "--git", "ar-best")
    assert r.exit_code == 0, r.output
    assert f"in the git repository {target};" in r.output and "under" not in r.output.split("repository")[-1]
    assert has_branch(target, "ar-best") and not has_branch(outer, "ar-best")
    assert git(target, "show", "ar-best:train.py").stdout == V2["train.py"]
