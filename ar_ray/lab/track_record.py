"""One ledger row as a tracker sees it: params, summary metrics, the training curve as steps, texts.

Rows come two ways, and both give the same Record: live from the driver (dicts as `engine/rows.py` builds
them: epoch-second times, dict maps, the curve as (progress, loss) pairs) and read back from the ledger
(`read_table(...).to_pylist()`: datetimes, maps as (key, value) lists, the curve as dicts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

from ar_ray.ledger.store import METRIC_COLUMNS

CURVE_STEPS = 1000  # a curve point's step is its progress in per-mille of the budget: every experiment shares the axis
PARAM_CHARS = 500  # longer values are cut (trackers limit a parameter's length; the diff goes whole as a text)
# the numbers of a row that a tracker gets as metrics, besides the target's metric and METRIC_COLUMNS;
# any other numeric column named *_seconds, *_usd or *_hours (e.g. gpu_cost_usd) is taken too
NUMBERS = ("best_metric", "gain", "threshold", "noise", "group_mean", "group_n", "prompt_tokens", "completion_tokens",
           "lines_added", "lines_removed", "returncode")
PARAMS = ("description", "role", "group_id", "parent_id", "proposer", "base_version", "best_version", "seed",
          "budget_seconds", "edit_hash", "trainer", "node", "gpu_model")
OK_STATUSES = ("ok",)  # a finished run; "pruned" was stopped on purpose, the rest failed


@dataclass(frozen=True)
class Record:
    experiment_id: str
    run_id: str
    status: str
    decision: str
    description: str = ""
    diff: str = ""
    error: str = ""
    params: dict = field(default_factory=dict)  # str -> str
    metrics: dict = field(default_factory=dict)  # str -> float (finite)
    curve: tuple = ()  # (step, loss, progress), steps strictly increasing
    started_at: float | None = None  # epoch seconds
    ended_at: float | None = None

    @property
    def outcome(self) -> str:
        """finished, stopped (pruned on purpose) or failed."""
        return "finished" if self.status in OK_STATUSES else "stopped" if self.status == "pruned" else "failed"

    @property
    def title(self) -> str:
        return f"{self.experiment_id} {self.params.get('role', '')}: {self.description}"[:120].strip()

    def note(self) -> str:
        """Description, outcome and the change, as Markdown (MLflow's run description, TensorBoard's text)."""
        text = f"{self.description}\n\nstatus **{self.status}**, decision **{self.decision}**"
        if self.error:
            text += f"\n\n```\n{self.error[-2000:]}\n```"
        if self.diff:
            text += f"\n\n```diff\n{self.diff}\n```"
        return text


def _epoch(v) -> float | None:
    if isinstance(v, datetime):
        return v.timestamp()
    return float(v) if isinstance(v, (int, float)) else None


def _pairs(v) -> dict:
    if isinstance(v, dict):
        return dict(v)
    return {k: val for k, val in v} if v else {}


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def curve_steps(curve) -> tuple:
    """(progress, loss) points -> (step, loss, progress) with steps strictly increasing (the last point of a step wins)."""
    points: dict[int, tuple] = {}
    for point in curve or ():
        progress, loss = (point["progress"], point["loss"]) if isinstance(point, dict) else point
        progress, loss = _number(progress), _number(loss)
        if progress is None or loss is None:
            continue
        step = int(round(min(max(progress, 0.0), 1.0) * CURVE_STEPS))
        points[step] = (step, loss, progress)
    return tuple(points[s] for s in sorted(points))


def to_record(row: dict, metric: str = "metric") -> Record:
    """A ledger row (live or read back) -> a Record; `metric` names the target's metric (run.json's `metric`)."""
    metrics = {}
    value = _number(row.get("metric"))
    if value is not None:
        metrics[metric] = value
    for name in (*METRIC_COLUMNS, *NUMBERS):
        if (v := _number(row.get(name))) is not None:
            metrics.setdefault(name, v)
    for name, v in row.items():  # the time breakdown and the spend, whatever columns the ledger has now
        if name.endswith(("_seconds", "_usd", "_hours")) and name not in PARAMS and (v := _number(v)) is not None:
            metrics.setdefault(name, v)
    for name, v in _pairs(row.get("extra")).items():  # the target's other summary keys, where they are numbers
        try:
            metrics.setdefault(f"extra/{name}", _number(float(v)))
        except (TypeError, ValueError):
            pass
    metrics = {k: v for k, v in metrics.items() if v is not None}
    params = {k: str(row[k])[:PARAM_CHARS] for k in PARAMS if row.get(k) not in (None, "")}
    params.update({f"knob/{k}": str(v)[:PARAM_CHARS] for k, v in _pairs(row.get("knobs")).items()})
    params.update(status=str(row.get("status")), decision=str(row.get("decision")))
    return Record(experiment_id=row["experiment_id"], run_id=str(row.get("run_id") or ""),
                  status=str(row.get("status") or ""), decision=str(row.get("decision") or ""),
                  description=row.get("description") or "", diff=row.get("diff") or "", error=row.get("error") or "",
                  params=params, metrics=metrics, curve=curve_steps(row.get("curve")),
                  started_at=_epoch(row.get("started_at")) or _epoch(row.get("proposed_at")),
                  ended_at=_epoch(row.get("ended_at")))


def tracked(row: dict) -> bool:
    """Rows that ran get a tracker run; proposals that never ran (decision skip) do not."""
    return row.get("decision") != "skip"
