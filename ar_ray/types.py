"""The plain data that crosses actor boundaries.

Every message between the driver, the proposers and the trainers is one of these
frozen dataclasses, so any test can build one by hand.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# Outcome of one attempt. The first group never reached a trainer.
PROPOSAL_STATUSES = ("invalid_edit", "duplicate", "integrity", "proposer_error", "unused")  # unused: the run stopped first
RUN_STATUSES = ("ok", "crash", "timeout", "oom", "diverged", "no_metric", "metric_mismatch", "tampered", "limit", "pruned",
                "infra")
STATUSES = PROPOSAL_STATUSES + RUN_STATUSES

# What the driver did with it.
DECISIONS = ("baseline", "keep", "discard", "skip", "screened", "promoted", "confirming", "reject", "conflict",
             "sweep")  # sweep: a run of a scaling sweep, recorded, not judged


@dataclass(frozen=True)
class Baseline:
    """The current best: what every proposer edits from."""

    version: int  # bumps each time the best changes
    files: dict[str, str]  # full text of every editable file
    experiment_id: str | None = None  # experiment that produced it; None for the target as shipped
    metric: float | None = None


@dataclass(frozen=True)
class Attempt:
    """One line of history a proposer sees (a compact view of a ledger row)."""

    experiment_id: str
    description: str
    status: str
    decision: str
    metric: float | None
    diff: str = ""
    error_tail: str = ""
    proposer: str = ""  # who made it ("llm-0/gpt-4o-mini": actor/endpoint); "policy" for a follow-up run
    group: str = ""  # the candidate a follow-up run belongs to (its screen's experiment_id)
    cost_usd: float = 0.0  # what the proposal cost (LLM tokens)
    gain: float | None = None  # the policy's gain over the best behind the decision (ledger column gain)
    threshold: float | None = None  # the gain it needed (ledger column threshold)


@dataclass(frozen=True)
class Proposal:
    """A proposer's answer: the complete new text of the editable files it changed."""

    proposer: str
    base_version: int
    description: str
    files: dict[str, str]  # every editable file, full text, after the edit
    status: str = "ok"  # "ok", or a PROPOSAL_STATUS when the proposer failed
    error: str = ""
    diff: str = ""  # unified diff against the baseline it was made from
    edit_hash: str = ""  # normalized hash of the resulting code (duplicate detection)
    lines_added: int = 0
    lines_removed: int = 0
    usage: dict[str, float] = field(default_factory=dict)  # prompt_tokens, completion_tokens, cost_usd, latency_s
    created_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Candidate:
    """One experiment for a trainer: the full editable files to run, and how."""

    experiment_id: str
    base_version: int
    files: dict[str, str]  # every editable file, full text
    seed: int = 0
    budget_seconds: float | None = None  # None: the target's budget
    knobs: dict[str, str] = field(default_factory=dict)  # scale knobs, passed as AR_<NAME> env vars
    timeout_seconds: float | None = None  # the hard timeout; None: the trainer applies `timeouts` alone
    prune: tuple[tuple[float, float], ...] = ()  # (progress, highest training loss allowed there): ar_ray/search/pruning.py


@dataclass(frozen=True)
class Result:
    """What a trainer reports back for one candidate."""

    experiment_id: str
    status: str
    metric: float | None = None
    metrics: dict[str, str] = field(default_factory=dict)  # every `key: value` line of the summary
    returncode: int | None = None
    error_tail: str = ""
    log_path: str = ""
    trainer: str = ""
    node: str = ""
    gpu_model: str = ""
    started_at: float = 0.0
    ended_at: float = 0.0
    child_seconds: float = 0.0  # wall time of the training child itself
    budget_seconds: float | None = None  # the wall-clock budget the trainer applied (CPU and GPU budgets differ)
    overhead_seconds: float = 0.0  # trainer-side work outside the child (materialize, parse, verify)
    curve: tuple[tuple[float, float], ...] = ()  # (progress, training loss) from the log, when the target has a pattern
    phases: dict[str, float | None] = field(default_factory=dict)  # startup/train/eval/teardown seconds (trainers/trainer.py phases)
