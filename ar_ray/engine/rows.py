"""Turning the messages of one attempt into a ledger row."""

from __future__ import annotations

from ar_ray.ledger.store import METRIC_COLUMNS
from ar_ray.types import Candidate, Proposal, Result


PHASES = ("startup", "train", "eval", "teardown")  # Result.phases -> the ledger's <phase>_seconds columns


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def proposal_row(run_id: str, experiment_id: str, parent_id: str | None, p: Proposal, best_version: int,
                 best_metric: float | None, status: str | None = None, error: str | None = None) -> dict:
    """A row for a proposal that never ran (invalid edit, duplicate, proposer failure)."""
    return {
        "run_id": run_id, "experiment_id": experiment_id, "parent_id": parent_id,
        "base_version": p.base_version, "best_version": best_version, "proposer": p.proposer,
        "description": p.description, "diff": p.diff or None, "edit_hash": p.edit_hash or None,
        "lines_added": p.lines_added, "lines_removed": p.lines_removed,
        "status": status or p.status, "decision": "skip", "best_metric": best_metric,
        "error": error if error is not None else p.error, "proposed_at": p.created_at,
        "prompt_tokens": int(p.usage.get("prompt_tokens", 0)) or None,
        "completion_tokens": int(p.usage.get("completion_tokens", 0)) or None,
        "cost_usd": p.usage.get("cost_usd"), "proposer_seconds": p.usage.get("latency_s"),
    }


def result_row(run_id: str, parent_id: str | None, p: Proposal, c: Candidate, r: Result, decision: str,
               best_version: int, best_metric: float | None, dispatched_at: float, budget: float | None,
               gpu_cost_usd: float | None = None) -> dict:
    """A row for an attempt that ran on a trainer (`gpu_cost_usd`: what its trainer time cost, ar_ray/lab/spend.py)."""
    row = proposal_row(run_id, c.experiment_id, parent_id, p, best_version, best_metric, r.status, r.error_tail)
    extra = {k: v for k, v in r.metrics.items() if k not in METRIC_COLUMNS}
    row.update({
        "decision": decision, "metric": r.metric, "extra": extra,
        **{k: _float(r.metrics.get(k)) for k in METRIC_COLUMNS},
        "seed": c.seed, "budget_seconds": c.budget_seconds or r.budget_seconds or budget, "knobs": c.knobs,
        "trainer": r.trainer, "node": r.node, "gpu_model": r.gpu_model,
        "started_at": r.started_at or None, "ended_at": r.ended_at or None,
        "queue_seconds": max(0.0, dispatched_at - p.created_at), "run_seconds": r.child_seconds,
        "overhead_seconds": r.overhead_seconds, "returncode": r.returncode, "log_path": r.log_path,
        # screened and confirming rows carry theirs too: a resume finishes a confirmation that was open
        "files": c.files if decision in ("keep", "baseline", "screened", "confirming") else None,
        "curve": list(r.curve) or None, "gpu_cost_usd": gpu_cost_usd,
        **{f"{k}_seconds": v for k, v in getattr(r, "phases", {}).items() if k in PHASES},
    })
    return row


def with_policy(row: dict, role: str, group: str, numbers: dict) -> dict:
    """The policy's numbers behind a decision, as columns."""
    row.update(role=role, group_id=group, noise=numbers.get("noise"), gain=numbers.get("gain"),
               threshold=numbers.get("threshold"), group_mean=numbers.get("group_mean"),
               group_n=numbers.get("group_n"))
    if numbers.get("reason"):
        row["error"] = numbers["reason"]
    return row
