"""Export the best's history as git commits: one commit per kept change, on a new branch.

    export_git("runs/x", "ar-ray/best")                    # into the target folder's repository
    export_git("runs/x", "ar-ray/best", repo="~/src/proj")  # or any other repository

The branch starts at the repository's HEAD (or `base`), gets a commit with the files the run started from
when they differ from that commit, then one commit per kept change on the current best's path, oldest first;
its final tree holds the best's files. The message is the change's description and its metric.

Only git plumbing is used (hash-object, a private index file, write-tree, commit-tree, update-ref): the
working tree, the real index, HEAD and the current branch are never touched, and an existing branch is
refused unless `force`; even then, a branch checked out in some worktree is refused.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ar_ray.ledger import analysis as A


class GitExportError(RuntimeError):
    pass


@dataclass(frozen=True)
class Commit:
    sha: str
    node: str  # the kept change's id (its screening experiment), or the baseline's
    version: int
    subject: str


def _git(repo: Path, *args: str, input: bytes | None = None, env: dict | None = None, check: bool = True) -> str:
    try:
        p = subprocess.run(["git", "-C", str(repo), *args], input=input, capture_output=True, env=env, timeout=120)
    except FileNotFoundError:
        raise GitExportError("git is not installed (the export runs the git command line)") from None
    if check and p.returncode != 0:
        raise GitExportError(f"git {' '.join(args[:2])} failed in {repo}: {p.stderr.decode(errors='replace').strip()}")
    return p.stdout.decode(errors="replace").strip() if p.returncode == 0 else ""


def find_repo(path: str | os.PathLike) -> Path | None:
    """The top of the git working tree that holds `path`, or None."""
    path = Path(path)
    if not path.is_dir():
        return None
    p = subprocess.run(["git", "-C", str(path), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    return Path(p.stdout.strip()).resolve() if p.returncode == 0 and p.stdout.strip() else None


def _message(r, prev_metric, metric_name: str, direction: str, run_id: str | None) -> tuple[str, str]:
    desc = str(r["description"] or "").strip() or "(no description)"
    first, _, rest = desc.partition("\n")
    subject = first.strip()
    if len(subject) > 200:
        subject = subject[:199] + "…"
    value = r["metric"]
    line = f"{metric_name} {value:.6f}" if pd.notna(value) else f"{metric_name} unknown"
    if pd.notna(prev_metric) and pd.notna(value):
        sign = 1.0 if direction == "min" else -1.0
        line += f" (was {prev_metric:.6f}, improvement {sign * (prev_metric - value):+.6f}, {direction}imized)"
    body = [subject, "", line]
    if rest.strip() or len(first.strip()) > 200:
        body += ["", desc]
    body += ["", f"ar-ray-run: {run_id or '-'}",
             f"ar-ray-experiment: {A.node_label(r['node'], r['ran_as'])} (decided by {r['experiment_id']})",
             f"ar-ray-version: {r['version']}", f"ar-ray-proposer: {r['proposer']}"]
    return subject, "\n".join(body) + "\n"


def _branch_in_use(repo: Path, ref: str) -> bool:
    out = _git(repo, "worktree", "list", "--porcelain", check=False)
    return any(line.strip() == f"branch {ref}" for line in out.splitlines()) or \
        _git(repo, "symbolic-ref", "-q", "HEAD", check=False) == ref


def export_git(run_dir: str | os.PathLike, branch: str, repo: str | os.PathLike | None = None, force: bool = False,
               base: str | None = None, df: pd.DataFrame | None = None) -> list[Commit]:
    """Write the current best's lineage as commits on a new `branch`; returns the commits made, oldest first.

    repo: default the git repository holding the run's target folder. Files go to the target folder's place
    in that repository, or to its root when the target is elsewhere. base: the commit to start from
    (default HEAD; an empty repository gets a root commit)."""
    from ar_ray.ledger.store import load

    run_dir = Path(run_dir)
    df = load(run_dir) if df is None else df
    info = A.run_info(run_dir, df)
    problem = A.baseline_problem(df, run_dir)
    if problem:
        raise GitExportError(f"{problem}; nothing to export")
    path = A.best_path(df, info["direction"])
    if path.empty:
        raise GitExportError(f"{run_dir} has no finished baseline yet: nothing to export")
    if path["version"].iloc[0] != 0:
        # without the unmodified target first, the first commit would also hold every difference between the
        # branch's start and the target as the run started from it
        raise GitExportError(f"the best's history in {run_dir} does not reach the unmodified target (it starts at "
                             f"{path['node'].iloc[0]}, version {path['version'].iloc[0]}); cannot rebuild it as commits")
    missing = [n for n, f in zip(path["node"], path["files"]) if not isinstance(f, dict)]
    if missing:
        raise GitExportError(f"the ledger holds no files for {', '.join(missing)}; cannot rebuild their code")

    target = Path(info["target"]).expanduser() if info.get("target") else None
    if repo is None:
        top = find_repo(target) if target is not None else None
        if top is None:
            raise GitExportError(f"the run's target {target or '(unknown: no run.json)'} is not in a git repository; "
                                 "pass --repo PATH")
    else:
        top = find_repo(Path(repo).expanduser())
        if top is None:
            raise GitExportError(f"{repo} is not a git repository (create one with `git init {repo}`)")
    prefix = ""
    if target is not None:
        try:
            rel = target.resolve().relative_to(top)
            prefix = "" if str(rel) == "." else rel.as_posix() + "/"
        except ValueError:
            prefix = ""

    ref = f"refs/heads/{branch}"
    if subprocess.run(["git", "check-ref-format", ref], capture_output=True).returncode != 0 or branch.startswith("-"):
        raise GitExportError(f"{branch!r} is not a valid branch name")
    old = _git(top, "rev-parse", "--verify", "-q", ref, check=False)
    if old and not force:
        raise GitExportError(f"branch {branch} already exists in {top}; choose another name, or pass --force "
                             "to replace it")
    if old and _branch_in_use(top, ref):
        raise GitExportError(f"branch {branch} is checked out in {top} (or one of its worktrees); "
                             "it is never overwritten, even with --force")
    start = _git(top, "rev-parse", "--verify", "-q", f"{base or 'HEAD'}^{{commit}}", check=False)
    if base and not start:
        raise GitExportError(f"{base!r} is not a commit in {top}")

    commits: list[Commit] = []
    with tempfile.TemporaryDirectory(prefix="ar-ray-git-") as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        if not (_git(top, "config", "user.email", check=False) and _git(top, "config", "user.name", check=False)):
            env.update(GIT_COMMITTER_NAME="ar-ray", GIT_COMMITTER_EMAIL="ar-ray@localhost")
        _git(top, "read-tree", start, env=env) if start else _git(top, "read-tree", "--empty", env=env)
        base_tree = _git(top, "write-tree", env=env)
        parent, prev_files, prev_metric = start or None, {}, None
        for _, r in path.iterrows():
            files: dict = r["files"]
            for rel in sorted(set(prev_files) - set(files)):
                _git(top, "update-index", "--force-remove", "--", prefix + rel, env=env)
            for rel in sorted(files):
                sha = _git(top, "hash-object", "-w", "--stdin", input=files[rel].encode("utf-8"))
                staged = _git(top, "ls-files", "-s", "--", prefix + rel, env=env, check=False)
                mode = staged.split()[0] if staged and staged.split()[0] in ("100644", "100755") else "100644"
                _git(top, "update-index", "--add", "--cacheinfo", f"{mode},{sha},{prefix}{rel}", env=env)
            tree = _git(top, "write-tree", env=env)
            root = r["version"] == 0
            if root and parent is not None and tree == base_tree:
                prev_files, prev_metric = files, r["metric"]
                continue  # the branch's start already holds the files the run started from
            if root:
                subject = f"ar-ray baseline: the target as run {info.get('run_id') or ''} started from".replace("  ", " ")
                metric = f"{info['metric']} {r['metric']:.6f}" if pd.notna(r["metric"]) else info["metric"]
                message = f"{subject}\n\n{metric}\n\nar-ray-run: {info.get('run_id') or '-'}\n"
            else:
                subject, message = _message(r, prev_metric, info["metric"], info["direction"], info.get("run_id"))
            when = r["time"]
            cenv = dict(env, GIT_AUTHOR_NAME=f"ar-ray ({r['proposer']})", GIT_AUTHOR_EMAIL="ar-ray@localhost")
            if pd.notna(when):
                cenv["GIT_AUTHOR_DATE"] = f"@{int(pd.Timestamp(when).timestamp())} +0000"
            args = ["commit-tree", tree] + (["-p", parent] if parent else []) + ["-F", "-"]
            parent = _git(top, *args, input=message.encode("utf-8"), env=cenv)
            commits.append(Commit(parent, r["node"], int(r["version"]), subject))
            prev_files, prev_metric = files, r["metric"]
    if parent is None:
        raise GitExportError("nothing to commit")
    # atomic: fails if the branch appeared (or moved) since we looked
    _git(top, "update-ref", "-m", f"ar-ray export-git {run_dir}", ref, parent, old or "")
    return commits
