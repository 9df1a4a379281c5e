"""Commands that read a run after the fact: `ar-ray report`, `ar-ray show`, `ar-ray best`, `ar-ray export-git`.

Registered on the `ar-ray` group in ar_ray/cli/main.py (main.add_command).
"""

from __future__ import annotations

import math
import os
import shlex
import socket
import subprocess
from collections import deque
from pathlib import Path

import click
import pandas as pd

from ar_ray.ledger import analysis as A
from ar_ray.ledger import store as ledger_mod

RUN_DIR = click.Path(exists=True, file_okay=False)


def _load(run_dir: str) -> pd.DataFrame:
    try:
        return ledger_mod.load(run_dir)
    except ledger_mod.LedgerError as e:
        raise click.ClickException(str(e)) from None


def _num(v, digits: int = 6, signed: bool = False) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "-"
    try:
        return f"{float(v):+.{digits}f}" if signed else f"{float(v):.{digits}f}"
    except (TypeError, ValueError):
        return str(v)


def _val(v) -> str:
    if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))  # an integer column with nulls reads as float
    return str(v)


@click.command()
@click.argument("run_dir", type=RUN_DIR)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Where to write report.html and progress.png (default: RUN_DIR/report).")
@click.option("--max-rows", type=click.IntRange(min=0), default=500, show_default=True,
              help="Experiment table: the last N rows (kept and baseline rows are always listed).")
def report(run_dir, out_dir, max_rows):
    """A progress plot (PNG) and a self-contained HTML report of a run."""
    try:
        import matplotlib  # noqa: F401

        from ar_ray.cli.report import build
    except ImportError as e:
        raise click.ClickException(f"the report needs matplotlib ({e}); pip install matplotlib") from None
    df = _load(run_dir)
    r = build(run_dir, out_dir, df=df, max_rows=max_rows)
    s = r.summary
    click.echo(f"best {s['metric']} {_num(s['best_metric'])} ({s['best_experiment'] or '-'}); "
               f"{s['experiments']} experiments, {s['kept']} kept, {sum(s['failures'].values())} failed runs")
    click.echo(f"wrote {r.html}")
    click.echo(f"wrote {r.png}")


def _find(df: pd.DataFrame, ident: str) -> pd.DataFrame:
    """By experiment id (e00042); a bare number is tried as an id (42 -> e00042), then as a seq."""
    rows = df[df["experiment_id"] == ident]
    if rows.empty and ident.isdigit():
        rows = df[df["experiment_id"] == f"e{int(ident):05d}"]
        if rows.empty:
            rows = df[df["seq"] == int(ident)]
    return rows


def _log_tail(path: str | None, run_dir: Path, node, lines: int) -> str:
    if not path:
        return "no log recorded (the proposal never ran)"
    p = Path(path)
    if not p.is_absolute():
        p = run_dir / p
    if not p.exists():
        where = ""
        if isinstance(node, str) and node and node != socket.gethostname():
            where = f"; it ran on node {node}, whose disk this machine may not see"
        return f"log not found: {p} (removed, or the run dir was moved{where})"
    with open(p, "rb") as f:
        tail = deque(f, maxlen=lines)
    text = b"".join(tail).decode("utf-8", errors="replace")
    return f"{p} (last {len(tail)} lines):\n{text.rstrip()}"


def _color_diff(diff: str) -> str:
    out = []
    for line in diff.splitlines():
        if line.startswith(("+++", "---", "diff --git")):
            out.append(click.style(line, bold=True))
        elif line.startswith("@@"):
            out.append(click.style(line, fg="cyan"))
        elif line.startswith("+"):
            out.append(click.style(line, fg="green"))
        elif line.startswith("-"):
            out.append(click.style(line, fg="red"))
        else:
            out.append(line)
    return "\n".join(out)


def _budget(r, info: dict) -> str:
    """What bounded the run: its token budget (a scale knob, or the run's) if it had one, else its seconds."""
    knobs = r["knobs"] if isinstance(r["knobs"], dict) else {}
    tokens = (knobs.get("budget_tokens") or info.get("budget_tokens")
              or (info.get("config") or {}).get("target_overrides", {}).get("budget_tokens"))
    return f"budget {int(float(tokens)):,} tokens" if tokens else f"budget {_num(r['budget_seconds'], 0)} s"


def _stale(r) -> bool:
    if pd.isna(r["base_version"]) or pd.isna(r["best_version"]):
        return False
    return r["best_version"] - (r["decision"] == "keep") > r["base_version"]  # a keep made the version it reports


def _curve_text(curve, points: int = 10) -> str | None:
    """The training curve (ledger column `curve`) in one line, about `points` points of it, the last always."""
    if curve is None or curve is pd.NA or isinstance(curve, float) or len(curve) == 0:  # (load() gives NA)
        return None
    curve = list(curve)
    step = max(1, len(curve) // points)
    shown = curve[::step] + ([curve[-1]] if (len(curve) - 1) % step else [])
    return (f"training curve ({len(curve)} points; progress loss): "
            + " · ".join(f"{p['progress']:.0%} {p['loss']:.4g}" for p in shown))


def show_text(df: pd.DataFrame, run_dir: str | os.PathLike, ident: str, lines: int = 40, color: bool = False) -> str:
    """What `ar-ray show` prints for one experiment."""
    rows = _find(df, ident)
    if rows.empty:
        raise click.ClickException(f"no experiment {ident!r} in {run_dir} (ids look like e00042; `ar-ray ledger` lists them)")
    r = rows.iloc[-1]
    info = A.run_info(run_dir, df)
    out = [f"{r['experiment_id']} (seq {r['seq']}) of run {_val(r['run_id'])}"]
    if len(rows) > 1:
        out.append(f"({len(rows)} rows carry this id; showing the last)")
    role = _val(r["role"])
    group = r["group_id"] if isinstance(r["group_id"], str) and r["group_id"] != r["experiment_id"] else None
    out.append(f"status {_val(r['status'])} · decision {_val(r['decision'])} · role {role}"
               + (f" (group {group})" if group else "") + f" · proposer {_val(r['proposer'])}")
    out.append(f"description: {_val(r['description'])}")
    out.append(f"{info['metric']} {_num(r['metric'])} · best after this row {_num(r['best_metric'])} · "
               f"gain {_num(r['gain'], signed=True)} · threshold {_num(r['threshold'])} · noise {_num(r['noise'])}"
               + (f" · group mean {_num(r['group_mean'])} over {_val(r['group_n'])} runs" if pd.notna(r["group_mean"]) else ""))
    out.append(f"made from version {_val(r['base_version'])} (parent {_val(r['parent_id'])}); best version when decided "
               f"{_val(r['best_version'])}" + (" (stale: the best moved while it ran)" if _stale(r) else ""))
    if r["decision"] != "skip":
        out.append(f"ran on {_val(r['trainer'])} / {_val(r['node'])} / {_val(r['gpu_model'])}, seed {_val(r['seed'])}, "
                   f"{_budget(r, info)}; started {_val(r['started_at'])}, ended {_val(r['ended_at'])}; "
                   f"run {_num(r['run_seconds'], 1)} s, queued {_num(r['queue_seconds'], 1)} s, "
                   f"overhead {_num(r['overhead_seconds'], 3)} s, exit code {_val(r['returncode'])}")
    if pd.notna(r["cost_usd"]) or pd.notna(r["prompt_tokens"]):
        out.append(f"proposer cost ${_num(r['cost_usd'], 4)}, tokens {_val(r['prompt_tokens'])} prompt + "
                   f"{_val(r['completion_tokens'])} completion, {_num(r['proposer_seconds'], 1)} s")
    summary = {k: r[k] for k in ledger_mod.METRIC_COLUMNS if pd.notna(r[k])}
    if isinstance(r["extra"], dict):
        summary.update(r["extra"])
    if summary:
        out.append("summary: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    if isinstance(r["knobs"], dict) and r["knobs"]:
        out.append("knobs: " + ", ".join(f"{k}={v}" for k, v in r["knobs"].items()))
    if (curve := _curve_text(r["curve"])) is not None:
        out.append(curve)
    if isinstance(r["error"], str) and r["error"].strip():
        out.append("error:\n" + r["error"].rstrip())
    diff, source = r["diff"], ""
    if not isinstance(diff, str) or not diff:
        screen = df[(df["experiment_id"] == r["group_id"]) & (df["role"] == "screen")] if isinstance(r["group_id"], str) else df.iloc[:0]
        if len(screen) and isinstance(screen["diff"].iloc[0], str) and screen["diff"].iloc[0]:
            diff, source = screen["diff"].iloc[0], f" (of {r['group_id']}, the proposal this run re-runs)"
    if isinstance(diff, str) and diff:
        out.append(f"diff{source}:\n" + (_color_diff(diff) if color else diff.rstrip()))
    else:
        out.append("diff: none (the code as it was: a baseline run, or a proposal that never made an edit)")
    out.append("log: " + _log_tail(r["log_path"] if isinstance(r["log_path"], str) else None, Path(run_dir), r["node"], lines))
    return "\n".join(out)


@click.command()
@click.argument("run_dir", type=RUN_DIR)
@click.argument("experiment_id")
@click.option("--lines", type=click.IntRange(min=0), default=40, show_default=True,
              help="Lines of the log to show (0: none).")
def show(run_dir, experiment_id, lines):
    """One experiment: its diff, metrics, decision and the end of its log."""
    df = _load(run_dir)
    click.echo(show_text(df, run_dir, experiment_id, lines, color=True))


def _git_destination(run_dir, df: pd.DataFrame, repo) -> tuple[Path | None, str, Path | None]:
    """(the repository a git export writes to, the target's folder in it ("" for its root), the target folder)."""
    from ar_ray.ledger.lineage import find_repo
    info = A.run_info(run_dir, df)
    target = Path(info["target"]).expanduser().resolve() if info.get("target") else None
    top = find_repo(Path(repo).expanduser()) if repo else (find_repo(target) if target is not None else None)
    if top is None or target is None:
        return top, "", target
    try:
        rel = target.relative_to(top).as_posix()
    except ValueError:
        return top, "", target
    return top, "" if rel == "." else rel, target


def _export_git(run_dir, branch, repo, force, base, df):
    """export_git, refusing a repository the user cannot have meant, and a line saying where the branch went.

    A target folder that is no repository of its own is exported into the repository around it (paths relative to
    that repository's root), which is right for a project's subfolder; when that repository tracks none of the
    target's files (a copy dropped into some other checkout), it is refused unless --repo names it."""
    from ar_ray.ledger.lineage import GitExportError, export_git
    top, prefix, target = _git_destination(run_dir, df, repo)
    if top is not None and prefix and repo is None:
        tracked = subprocess.run(["git", "-C", str(top), "--literal-pathspecs", "ls-files", "--", prefix],
                                 capture_output=True, text=True)
        if tracked.returncode == 0 and not tracked.stdout.strip():
            raise click.ClickException(
                f"the run's target {target} is not a git repository of its own, and the repository around it, {top}, "
                f"tracks none of its files: the branch would land there, with paths under {prefix}/. Pass --repo "
                f"{top} to write there anyway, or make the target a repository (git -C {target} init && git -C "
                f"{target} add -A && git -C {target} commit -m target) and run this again")
    try:
        commits = export_git(run_dir, branch, repo=repo, force=force, base=base, df=df)
    except GitExportError as e:
        raise click.ClickException(str(e)) from None
    where = f"in the git repository {top}"
    if prefix:
        where += (f", with the target's files under {prefix}/ (the target folder is not a repository of its own: "
                  "the repository around it received the branch)")
    return commits, where + f"; see it with: git -C {shlex.quote(str(top))} log {shlex.quote(branch)}"


@click.command()
@click.argument("run_dir", type=RUN_DIR)
@click.option("--export", "export_dir", type=click.Path(file_okay=False), default=None, help="Write the best files here.")
@click.option("--git", "git_branch", default=None,
              help="Write the kept changes as commits on this new branch of the target's git repository.")
@click.option("--repo", type=click.Path(file_okay=False), default=None, help="With --git: another repository.")
@click.option("--force", is_flag=True,
              help="With --git: replace the branch if it exists (never one that is checked out).")
def best(run_dir, export_dir, git_branch, repo, force):
    """The best result, its lineage of kept changes, and its files."""
    if (force or repo) and not git_branch:
        raise click.UsageError("--force and --repo go with --git BRANCH (the branch to write the lineage on)")
    df = _load(run_dir)
    problem = A.sweep_note(run_dir) or A.baseline_problem(df, run_dir)
    if problem:
        raise click.ClickException(problem)
    info = A.run_info(run_dir, df)
    path = A.best_path(df, info["direction"])
    if path.empty or not isinstance(path["files"].iloc[-1], dict):
        raise click.ClickException(f"{run_dir}: the ledger holds no files for the best; nothing to show")
    top = path.iloc[-1]
    click.echo(f"best {info['metric']} {_num(top.metric)} from {A.node_label(top.node, top.ran_as)} (version {top.version})")
    click.echo("lineage:")
    for r in path.itertuples():
        click.echo(f"  {A.node_label(r.node, r.ran_as)}  {_num(r.metric)}  {r.description}")
    if export_dir:
        out = Path(export_dir)
        for rel, text in top.files.items():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_text(text)
        click.echo(f"wrote {', '.join(sorted(top.files))} to {out}")
    if git_branch:
        commits, where = _export_git(run_dir, git_branch, repo, force, None, df)
        click.echo(f"branch {git_branch}: {len(commits)} commit(s), one per kept change")
        click.echo(where)


@click.command("export-git")
@click.argument("run_dir", type=RUN_DIR)
@click.argument("branch")
@click.option("--repo", type=click.Path(exists=True, file_okay=False), default=None,
              help="The git repository to write to (default: the one holding the run's target folder).")
@click.option("--base", default=None, help="Commit to start the branch from (default: the repository's HEAD).")
@click.option("--force", is_flag=True, help="Replace the branch if it exists (never one that is checked out).")
def export_git_cmd(run_dir, branch, repo, base, force):
    """Write the best's lineage as commits on a new git branch: one commit per kept change.

    The working tree, index and current branch of the repository are left alone."""
    commits, where = _export_git(run_dir, branch, repo, force, base, _load(run_dir))
    for c in commits:
        click.echo(f"{c.sha[:12]}  v{c.version}  {c.node}  {c.subject}")
    click.echo(f"branch {branch}: {len(commits)} commit(s)")
    click.echo(where)


COMMANDS = (report, show, best, export_git_cmd)
