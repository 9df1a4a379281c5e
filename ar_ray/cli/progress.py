"""What a run shows while it runs: a live panel on a terminal, a line per result otherwise,
and `status.json` in the run dir for `ar-ray status` in another shell."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ar_ray.code.answers import short_reason
from ar_ray.types import PROPOSAL_STATUSES

STATUS_FILE = "status.json"
STATUS_EVERY = 1.0  # seconds between status.json writes


def snapshot(driver, state: str = "running") -> dict:
    """The driver's state as plain JSON: what `ar-ray status` shows."""
    now = time.time()
    over = state != "running"  # finished, interrupted or aborted: whatever was in flight was stopped with it
    running = [] if over else [
        {"trainer": f.trainer, "experiment_id": f.candidate.experiment_id, "description": f.job.proposal.description,
         "role": f.job.role, "elapsed": now - f.dispatched_at} for f in driver.running.values()]
    c = driver.count
    elapsed = now - driver.started_at
    eta = None
    if driver.max_experiments and c.ran and not over:  # from the pace of new candidates started so far
        eta = elapsed / c.ran * max(driver.max_experiments - c.ran, 0)
    pol = driver.policy
    rungs = [{"scale": scale.describe(), "noise": pol.noise(i), "best_mean": pol.mean_at(i),
              "best_runs": len(pol.best_runs.get(i, []))} for i, scale in enumerate(driver.scales)]
    return {"state": state, "run_id": driver.run_id, "updated_at": now, "elapsed": elapsed, "eta": eta,
            "rungs": rungs if len(rungs) > 1 else [],
            "metric": driver.target.metric, "best_metric": driver.best.metric, "best_experiment": best_id(driver),
            "best_version": driver.best.version, "noise": driver.policy.noise(),
            "acceptance": driver.policy.config.acceptance, "deterministic": driver.policy.deterministic, "experiments": c.ran, "max_experiments": driver.max_experiments,
            "runs_done": c.runs - len(driver.running),
            "kept": c.kept, "failed": c.failed, "pruned": c.pruned, "skipped": c.skipped, "infra": c.infra,
            "by_status": dict(c.by_status), "queued": len(driver.queue), "followups": len(driver.followups), "proposing": len(driver.proposing),
            "trainers": len(driver.trainers), "running": sorted(running, key=lambda r: r["trainer"]),
            "throughput_per_hour": 3600 * (c.runs - len(driver.running)) / elapsed if elapsed > 0 else 0.0,
            "spend": _spend(driver), "alerts": driver.alerts.state() if getattr(driver, "alerts", None) else None}


def _spend(driver) -> dict | None:
    """GPU + LLM spend, what it bought, and how much of each budget is used (ar_ray/lab/spend.py)."""
    meter = getattr(driver, "meter", None)
    if meter is None:
        return None
    return {**meter.figures(driver.count.cost_usd, driver.count.kept, driver.best.metric),
            "budget_used": driver.budget_used(), "budget": meter.budget.describe()}


def write_status(run_dir: Path, snap: dict) -> None:
    tmp = run_dir / f".{STATUS_FILE}.tmp"
    tmp.write_text(json.dumps(snap, indent=1))
    os.replace(tmp, run_dir / STATUS_FILE)


def fmt_metric(v) -> str:
    return "-" if v is None else f"{v:.6f}"


def fmt_seconds(s) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def best_id(driver) -> str | None:
    """The experiment the best comes from; for the target as shipped (which the driver's best names by no
    experiment, live or resumed) its first baseline run, e00000: status and summary name it the same way."""
    return driver.best.experiment_id or driver.versions.get(driver.best.version)


def best_label(experiment: str | None, version, short: bool = False) -> str:
    """How the summary and the status line name the best: `e00003, version 2`, and for version 0 always
    `the target as shipped, e00000, version 0`."""
    where = f"{experiment or '-'}, {'v' if short else 'version '}{version}"
    return f"the target as shipped, {where}" if version == 0 else where


def render(snap: dict) -> Group:
    head = Text.assemble(
        ("best ", "bold"), (f"{snap['metric']} {fmt_metric(snap['best_metric'])}", "bold green"),
        f" ({best_label(snap['best_experiment'], snap['best_version'], short=True)})   ",
        f"candidates {snap['experiments']}" + (f"/{snap['max_experiments']}" if snap["max_experiments"] else ""),
        f"  runs done {snap['runs_done']}",
        f"  running {len(snap['running'])}/{snap['trainers']}  queued {snap['queued']} new + {snap['followups']} follow-up",
        "  noise 0 (deterministic target)" if snap.get("deterministic") else f"  noise {fmt_metric(snap['noise'])}",
        f"  kept {snap['kept']}  failed {snap['failed']}" + (f"  pruned {snap['pruned']}" if snap.get("pruned") else "")
        + f"  skipped {snap['skipped']}  infra {snap['infra']}",
        f"   elapsed {fmt_seconds(snap['elapsed'])}  eta {fmt_seconds(snap['eta'])}",
    )
    parts = [head]
    if snap.get("spend"):
        from ar_ray.lab.spend import describe
        sp = snap["spend"]
        used = ", ".join(f"{v:.0%} of {k.replace('_', ' ')} budget" for k, v in sp["budget_used"].items())
        parts.append(Text(describe(sp, snap["metric"]) + (f"; {used} ({sp['budget']})" if used else ""), style="dim"))
    for w in snap.get("alerts") or []:
        parts.append(Text(f"alerts to {w['url']}: {w['sent']} sent" + (f", {w['failed']} NOT delivered (last error: "
                          f"{w['last_error']})" if w["failed"] else ""), style="yellow" if w["failed"] else "dim"))
    for i, r in enumerate(snap.get("rungs") or []):  # a promotion ladder: the best and the noise at each rung
        parts.append(Text(f"  rung {i} ({r['scale']}): best {fmt_metric(r['best_mean'])} over {r['best_runs']} runs, "
                          f"noise {fmt_metric(r['noise'])}", style="dim"))
    table = Table(box=None, show_header=True, header_style="dim")
    for col in ("trainer", "experiment", "elapsed", "change"):
        table.add_column(col)
    for r in snap["running"]:
        table.add_row(str(r["trainer"]), r["experiment_id"], fmt_seconds(r["elapsed"]), r["description"][:70])
    return Group(*parts, table)


def row_line(row: dict) -> Text:
    style = {"keep": "bold green", "baseline": "bold", "discard": "", "skip": "dim"}.get(row["decision"], "")
    detail = (row.get("description") or "")[:70]
    errors = [line.strip() for line in (row.get("error") or "").splitlines() if line.strip()]
    if row["status"] in PROPOSAL_STATUSES and errors:  # a proposal's reason leads its error; format help follows
        errors = [short_reason(row["error"])]
    if row["status"] != "ok" and errors:  # why it failed, on the console (the whole text: `ar-ray show`)
        detail = f"{detail} | {errors[-1][:120]}" if detail else errors[-1][:160]
    return Text(f"{row['experiment_id']}  {row['status']:<15} {fmt_metric(row.get('metric')):>10}  "
                f"{row['decision']:<8} {detail}", style=style)


class Progress:
    """The driver's on_event callback."""

    def __init__(self, run_dir: Path, console: Console | None = None, live: bool | None = None):
        self.run_dir = Path(run_dir)
        self.console = console or Console()
        self.live = Live(console=self.console, refresh_per_second=4, transient=True) \
            if (self.console.is_terminal if live is None else live) else None
        self.last_write = 0.0

    def __enter__(self):
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.live.__exit__(*exc)

    def __call__(self, kind: str, driver, row: dict | None) -> None:
        if kind == "note":
            self.console.print(row["text"])
            return
        if kind == "row":
            self.console.print(row_line(row))
            self.console.file.flush()  # a watcher of a piped log sees each row as soon as it is on disk
        elif kind in ("infra", "proposer_error"):
            self.console.print(Text(f"infra: {row.get('experiment_id', '')} {row['error'][:200]}", style="yellow"))
        if kind == "finished":
            write_status(self.run_dir, snapshot(driver, row["state"]))
            return
        now = time.time()
        if now - self.last_write >= STATUS_EVERY or kind == "row":
            snap = snapshot(driver)
            write_status(self.run_dir, snap)
            self.last_write = now
            if self.live:
                self.live.update(render(snap))
