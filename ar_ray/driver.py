"""The driver: one process, one `ray.wait` loop.

It keeps a bounded queue of ready proposals so no trainer waits on a
proposer, dispatches to free trainers, records every attempt in the ledger,
decides against the best known when a result lands, and broadcasts a new best
to every proposer. It holds no research logic (that is `policy`) and knows
nothing of how proposals are made or how training runs.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from dataclasses import dataclass, field

import ray
from ray.exceptions import RayActorError, RayTaskError

from ar_ray import policy, rows
from ar_ray.ledger import Ledger
from ar_ray.target import Target
from ar_ray.types import Attempt, Baseline, Candidate, Proposal, Result
from proposers.base import code_hash

TICK = 0.5  # seconds between status refreshes when nothing lands
HISTORY = 30  # attempts shown to proposers


class RunAborted(RuntimeError):
    """The run cannot go on (e.g. the unmodified target fails); the message says why."""


@dataclass
class Counters:
    proposed: int = 0
    ran: int = 0
    kept: int = 0
    failed: int = 0  # ran but did not produce a metric
    skipped: int = 0  # never ran: invalid, duplicate, proposer error
    infra: int = 0  # trainer or proposer lost; work re-queued
    cost_usd: float = 0.0  # proposer spend (LLM tokens)
    starved: int = 0  # times a trainer finished and found no ready proposal waiting (it idles on a proposer)
    by_status: collections.Counter = field(default_factory=collections.Counter)


@dataclass
class Flight:
    trainer: int
    candidate: Candidate
    proposal: Proposal
    parent_id: str | None
    dispatched_at: float
    retries: int = 0


class Driver:
    def __init__(self, target: Target, ledger: Ledger, run_id: str, trainers: list, proposers: list, *,
                 queue_depth: int, max_experiments: int | None = None, time_limit: float | None = None,
                 seed: int = 0, budget_seconds: float | None = None, max_skipped_in_a_row: int = 200,
                 max_cost: float | None = None,
                 on_event=None, restore=None):
        self.target, self.ledger, self.run_id = target, ledger, run_id
        self.trainers, self.proposers = trainers, proposers
        self.queue_depth, self.max_experiments = queue_depth, max_experiments
        self.deadline = time.time() + time_limit if time_limit else None
        self.seed, self.budget = seed, budget_seconds
        self.max_skipped_in_a_row = max_skipped_in_a_row
        self.max_cost = max_cost
        self.on_event = on_event or (lambda kind, driver, row: None)
        self.started_at = time.time()
        self.count = Counters()
        self.queue: collections.deque[Proposal] = collections.deque()
        self.proposing: dict = {}  # ref -> proposer index
        self.running: dict = {}  # ref -> Flight
        self.free = list(range(len(trainers)))
        self.seen: set[str] = set()  # edit hashes tried, queued or in flight
        self.history: collections.deque[Attempt] = collections.deque(maxlen=HISTORY)
        self.versions: dict[int, str | None] = {}  # baseline version -> experiment that made it
        self.best = Baseline(version=0, files=target.read_editable())
        self.next_id = 0
        self.pending: list[tuple[Flight, Result]] = []  # landed before the baseline's metric was known
        self.skipped_in_a_row = 0
        self.just_freed = 0
        self.stopping = False
        if restore:
            restore(self)
        self.versions.setdefault(self.best.version, self.best.experiment_id)

    # ---- the loop ----

    def run(self) -> Counters:
        self._broadcast()
        if self.best.metric is None:
            self._dispatch(self._baseline_proposal())
            self.versions[0] = next(iter(self.running.values())).candidate.experiment_id
        while self.running or self.pending or not self._finished():
            if not self._finished():
                self._top_up()
                while self.free and self.queue and not self._finished():
                    self._dispatch(self.queue.popleft())
                if self.free and not self._finished():
                    self.count.starved += min(self.just_freed, len(self.free))
            self.just_freed = 0
            for ref in self._wait():
                if ref in self.running:
                    self._landed(ref)
                else:
                    self._proposed(ref)
            self.on_event("tick", self, None)
        return self.count

    def _wait(self) -> list:
        """Block until something lands (or a tick passes), then take everything that is ready."""
        refs = list(self.running) + list(self.proposing)
        if not refs:
            time.sleep(TICK)
            return []
        ready, rest = ray.wait(refs, num_returns=1, timeout=TICK)
        if ready and rest:
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        return ready

    def stop(self) -> None:
        """Stop dispatching; running experiments finish (or are killed by stop_trainers)."""
        self.stopping = True

    def _finished(self) -> bool:
        """No new experiment may start."""
        return (self.stopping
                or (self.max_experiments is not None and self.count.ran >= self.max_experiments)
                or (self.deadline is not None and time.time() >= self.deadline)
                or (self._over_budget() and not self.queue and not self.proposing))

    def _over_budget(self) -> bool:
        return self.max_cost is not None and self.count.cost_usd >= self.max_cost

    # ---- proposals ----

    def _top_up(self) -> None:
        """Keep queued + requested proposals at the queue depth, spread over the proposers."""
        if self._over_budget():
            return  # --max-cost reached: what is queued still runs, nothing new is asked for
        want = self.queue_depth - len(self.queue) - len(self.proposing)
        busy = collections.Counter(self.proposing.values())
        for _ in range(max(0, want)):
            i = min(range(len(self.proposers)), key=lambda k: busy[k])
            busy[i] += 1
            in_flight = [f.proposal.description for f in self.running.values()]
            self.proposing[self.proposers[i].propose.remote(list(self.history), in_flight, self.best_ref)] = i

    def _proposed(self, ref) -> None:
        i = self.proposing.pop(ref)
        try:
            p: Proposal = ray.get(ref)
        except (RayActorError, RayTaskError) as e:
            # a proposer died (it restarts by itself) or raised: nothing was queued, so nothing is lost
            self.count.infra += 1
            self.on_event("proposer_error", self, {"error": _reason(e)})
            self._skipped_again(f"proposer error: {_reason(e)}")
            return
        self.count.proposed += 1
        self.count.cost_usd += p.usage.get("cost_usd", 0.0)
        if p.status == "ok" and p.edit_hash in self.seen:
            p = dataclasses.replace(p, status="duplicate", error="identical code was already tried or is queued")
        if p.status != "ok":
            self._record(rows.proposal_row(self.run_id, self._new_id(), self.versions.get(p.base_version), p,
                                           self.best.version, self.best.metric))
            self.count.skipped += 1
            self._skipped_again(f"{p.status}: {p.error}")
            return
        self.skipped_in_a_row = 0
        self.seen.add(p.edit_hash)
        self.queue.append(p)

    def _skipped_again(self, last: str) -> None:
        self.skipped_in_a_row += 1
        if self.skipped_in_a_row >= self.max_skipped_in_a_row:
            raise RunAborted(f"{self.skipped_in_a_row} proposals in a row could not run (last: {last[:400]}); "
                             "check the proposer's configuration and the ledger's error column")

    # ---- training ----

    def _dispatch(self, p: Proposal, flight: Flight | None = None) -> None:
        t = self.free.pop(0)
        if flight is None:
            cand = Candidate(experiment_id=self._new_id(), base_version=p.base_version, files=p.files,
                             seed=self.seed, budget_seconds=self.budget)
            flight = Flight(t, cand, p, self.versions.get(p.base_version), time.time())
            self.count.ran += p.proposer != "baseline"
        flight.trainer = t
        self.running[self.trainers[t].run.remote(flight.candidate)] = flight

    def _landed(self, ref) -> None:
        flight = self.running.pop(ref)
        self.free.append(flight.trainer)
        self.just_freed += 1
        try:
            result: Result = ray.get(ref)
        except (RayActorError, RayTaskError) as e:
            self._requeue(flight, _reason(e))
            return
        if result.status == "infra" and not self.stopping:
            self._requeue(flight, result.error_tail)
            return
        if self.best.metric is None and flight.proposal.proposer != "baseline":
            self.pending.append((flight, result))
            return
        self._decide(flight, result)
        if flight.proposal.proposer == "baseline":
            for f, r in self.pending:
                self._decide(f, r)
            self.pending.clear()

    def _requeue(self, flight: Flight, why: str) -> None:
        """The trainer was lost, not the candidate's fault: run it again elsewhere, up to 3 times."""
        self.count.infra += 1
        self.on_event("infra", self, {"experiment_id": flight.candidate.experiment_id, "error": why})
        if flight.retries < 3 and not self.stopping and self.free:
            flight.retries += 1
            self._dispatch(flight.proposal, flight)
        elif flight.retries < 3 and not self.stopping:
            self.queue.appendleft(flight.proposal)  # a fresh flight later; the id is reassigned
            self.count.ran -= flight.proposal.proposer != "baseline"
        else:
            r = Result(flight.candidate.experiment_id, "infra", error_tail=why)
            self._decide(flight, r)

    def _decide(self, flight: Flight, r: Result) -> None:
        is_baseline = flight.proposal.proposer == "baseline"
        if is_baseline and r.status != "ok":
            self._record(self._row(flight, r, "baseline"))
            raise RunAborted(f"the unmodified target failed ({r.status}): {r.error_tail.strip()[-1500:]}\n"
                             f"log: {r.log_path}. Fix the target (command, metric_pattern, files) and run again.")
        decision = "baseline" if is_baseline else policy.decide(self.target, self.best.metric, r)
        if decision in ("keep", "baseline"):
            version = self.best.version + (decision == "keep")
            self.best = Baseline(version, flight.candidate.files, flight.candidate.experiment_id, r.metric)
            self.versions[version] = flight.candidate.experiment_id
            self.count.kept += decision == "keep"
            self._broadcast()
        self.count.failed += r.status != "ok"
        self.count.by_status[r.status] += 1
        self._record(self._row(flight, r, decision))

    def _row(self, flight: Flight, r: Result, decision: str) -> dict:
        return rows.result_row(self.run_id, flight.parent_id, flight.proposal, flight.candidate, r, decision,
                               self.best.version, self.best.metric, flight.dispatched_at,
                               self.budget or self.target.budget_seconds)

    # ---- bookkeeping ----

    def _baseline_proposal(self) -> Proposal:
        self.count.proposed += 1
        return Proposal(proposer="baseline", base_version=self.best.version, description="baseline",
                        files=self.best.files, edit_hash=code_hash(self.best.files))

    def _broadcast(self) -> None:
        self.seen.add(code_hash(self.best.files))
        self.best_ref = ray.put(self.best)  # one copy in the object store, shared by every proposer
        for p in self.proposers:
            p.update.remote(self.best_ref)

    def _record(self, row: dict) -> None:
        self.ledger.append(row)
        self.history.append(Attempt(row["experiment_id"], row["description"] or "", row["status"], row["decision"],
                                    row.get("metric"), row.get("diff") or "", row.get("error") or ""))
        self.on_event("row", self, row)

    def _new_id(self) -> str:
        self.next_id += 1
        return f"e{self.next_id - 1:05d}"




def _reason(e: Exception) -> str:
    """One readable line for a Ray error: the underlying exception when there is one."""
    cause = getattr(e, "cause", None)
    if cause is not None and cause is not e:
        return f"{type(cause).__name__}: {cause}"
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__
