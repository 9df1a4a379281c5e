"""The driver: one process, one `ray.wait` loop.

It keeps a bounded queue of ready proposals so no trainer waits on a
proposer, dispatches to free trainers (the policy's follow-up runs first),
records every attempt in the ledger, hands each result to the policy, and
broadcasts a new best to every proposer. It holds no research logic (that is
`policy`) and knows nothing of how proposals are made or how training runs.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import time
from dataclasses import dataclass, field

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from ar_ray.code import edits
from ar_ray.code.codehash import code_hash
from ar_ray.engine import rows
from ar_ray.engine.journal import Journal
from ar_ray.ledger.store import Ledger
from ar_ray.search import pruning
from ar_ray.search.policy import Policy, RunSpec, Verdict
from ar_ray.search.scale import Scale
from ar_ray.target import Target
from ar_ray.timeouts import Timeouts
from ar_ray.types import Attempt, Baseline, Candidate, Proposal, Result

TICK = 0.5  # seconds between status refreshes when nothing lands
HISTORY = 30  # attempts shown to proposers
PRIME_ROWS = 10_000  # on a resume, each proposer's memory is primed with the newest this many ledger rows
_FOLLOWUP = re.compile(r"^((baseline|confirm|rebase|promote) of \S+: )+")  # a follow-up's own prefix, said once
DETERMINISTIC = ("deterministic target: the unmodified target's repeats with different seeds gave the very same "
                 "metric (it ignores AR_SEED), so each candidate runs once and any strict gain is kept; no "
                 "confirmation runs are spent")
FIRST_FAILURES = 10  # proposer errors in a row before any candidate ran: the proposer cannot work, stop early
SKIPPED_IN_A_ROW = 200  # proposals in a row that did not run, duplicates included: stop (unusable ones: the flag)


class RunAborted(RuntimeError):
    """The run cannot go on (e.g. the unmodified target fails); the message says why."""


@dataclass
class Counters:
    proposed: int = 0
    ran: int = 0  # new candidates run (follow-up runs not counted)
    runs: int = 0  # every run on a trainer
    kept: int = 0
    failed: int = 0  # ran but did not produce a metric (pruned runs not counted)
    pruned: int = 0  # stopped early: clearly worse than the best at the same progress (--prune)
    skipped: int = 0  # never ran: invalid, duplicate, proposer error
    infra: int = 0  # trainer or proposer lost; work re-queued
    cost_usd: float = 0.0  # proposer spend (LLM tokens)
    starved: int = 0  # times a trainer finished and found no ready work (it idles on a proposer)
    by_status: collections.Counter = field(default_factory=collections.Counter)


@dataclass
class Job:
    """One run to dispatch: a fresh proposal (role 'screen') or a follow-up the policy asked for."""

    proposal: Proposal
    role: str = "screen"
    group: str | None = None
    parent_id: str | None = None
    experiment_id: str | None = None
    candidate: Candidate | None = None  # made at the first dispatch; a re-dispatch after a lost trainer reuses it
    dispatched_at: float = 0.0
    retries: int = 0  # trainers lost while running it
    rung: int = 0  # scale on the promotion ladder (new candidates start at the cheapest)


@dataclass
class Flight:
    trainer: int
    job: Job

    @property
    def candidate(self) -> Candidate:
        return self.job.candidate

    @property
    def dispatched_at(self) -> float:
        return self.job.dispatched_at


class Driver:
    def __init__(self, target: Target, ledger: Ledger, run_id: str, trainers: list, proposers: list, policy: Policy,
                 *, queue_depth: int, max_experiments: int | None = None, time_limit: float | None = None,
                 seed: int = 0, budget_seconds: float | None = None, max_skipped_in_a_row: int = 20,
                 max_cost: float | None = None, scales: tuple[Scale, ...] = (), prune: pruning.PruneRule | None = None,
                 on_event=None, proposer_kind: str = "", meter=None):
        self.target, self.ledger, self.run_id, self.policy = target, ledger, run_id, policy
        self.journal = Journal(ledger.dir.parent)
        self.trainers, self.proposers = trainers, proposers
        self.queue_depth, self.max_experiments = queue_depth, max_experiments
        self.deadline = time.time() + time_limit if time_limit else None
        self.seed, self.budget = seed, budget_seconds
        self.scales = scales or (Scale(),)  # rung -> budget and knobs; one rung without a ladder
        self.timeouts = Timeouts(target.timeout_seconds, target.budget_tokens)  # learns from the best's runs
        self.gpu_models: dict[int, str] = {}  # trainer index -> its GPU model, from its results
        self.prune, self.references = prune, pruning.References()  # the best's training curves, per scale
        self.max_skipped_in_a_row, self.max_cost = max_skipped_in_a_row, max_cost
        self.meter = meter  # ar_ray.lab.spend.Meter: GPU spend per row, the --max-cost / --max-gpu-hours budget
        self.alerts = None  # ar_ray.lab.notify.Alerts when --notify is given (status shows its webhooks)
        self.resumed = False
        self.landing: list[tuple[str, float]] = []  # (GPU model, seconds) of runs landed, not yet charged
        self.on_event = on_event or (lambda kind, driver, row: None)
        self.started_at = time.time()
        self.count = Counters()
        self.queue: collections.deque[Proposal] = collections.deque()  # ready proposals
        self.followups: collections.deque[Job] = collections.deque()  # the policy's runs go first
        self.proposing: dict = {}  # ref -> proposer index
        self.running: dict = {}  # ref -> Flight
        self.free = list(range(len(trainers)))
        self.down: dict[tuple[str, int], tuple[float, int]] = {}  # (kind, index) of a lost actor -> (next ping, tries)
        self.pings: dict = {}  # ref -> (kind, index): is a lost actor back?
        self.seen: set[str] = set()  # code hashes tried, queued or in flight
        self.history: collections.deque[Attempt] = collections.deque(maxlen=HISTORY)
        self.versions: dict[int, str | None] = {0: None}  # best version -> experiment that made it
        self.best = Baseline(version=0, files=target.read_editable())
        self.seeds: collections.Counter = collections.Counter()  # runs per code hash: each gets its own seed
        self.next_id = 0
        self.pending: list[tuple[Flight, Result]] = []  # landed before the best's metric was known
        self.unwritten: list[dict] = []  # rows of the current round, appended together
        self.skipped_in_a_row = self.just_freed = self.broken_in_a_row = 0
        self.unusable_in_a_row = 0  # proposals in a row that could not be used (duplicates neither count nor reset)
        self.stopping = False
        self.proposer_kind = proposer_kind  # mutate, llm, ...: what the stop message advises
        self.aborting: RunAborted | None = None  # the proposers cannot work: what runs finishes, then this is raised

    # ---- the loop ----

    def run(self) -> Counters:
        """Run to the end. Rows are appended once per round, after the freed trainers got new work."""
        self._broadcast()
        if not self.policy.best_metrics and not self.policy.groups:  # a fresh run (a resume restored these)
            first = self._new_id()
            self.versions[0] = first
            for i, spec in enumerate(self.policy.start(self.best.files, first)):
                self.followups.append(self._job(spec, experiment_id=first if i == 0 else None))
        # screens held for a comparison that cannot come once time is out stay in the journal (a resume runs them)
        while self.running or self._more_to_dispatch() or (self.pending and not self._out_of_time()):
            self._fill_trainers()
            ready = self._wait()
            landed = [(_get(ref), self.running.pop(ref)) for ref in ready if ref in self.running]
            for out, flight in landed:
                if isinstance(out, RayActorError):  # a lost trainer gets work again once it answers a ping
                    self._down("trainer", flight.trainer)
                else:
                    self.free.append(flight.trainer)
                    self.just_freed += 1
                    self._reference_curve(flight, out)  # before the next dispatch: it may be pruned against it
            # the budget counts these before they are charged (below), as it counted them while they ran
            self.landing = [(out.gpu_model, out.ended_at - out.started_at) for out, _ in landed
                            if isinstance(out, Result)]
            self._fill_trainers()  # freed trainers start on queued work before any bookkeeping
            try:
                self.landing = []
                for out, flight in landed:
                    self._landed(out, flight)
                for ref in ready:
                    if ref in self.proposing:
                        self._proposed(ref)
                    elif ref in self.pings:
                        self._pinged(ref)
            finally:
                self._flush()
            self.on_event("tick", self, None)
        self.record_unused()
        if self.aborting is not None:
            raise self.aborting
        return self.count

    def record_unused(self) -> None:
        """Proposals queued or answered when the run stops get a row each: their cost was spent (--max-cost)."""
        done = ray.wait(list(self.proposing), num_returns=len(self.proposing), timeout=0)[0] if self.proposing else []
        for ref in done:
            self.proposing.pop(ref)
            try:
                p: Proposal = ray.get(ref)
            except (RayActorError, RayTaskError):
                continue
            self.count.cost_usd += p.usage.get("cost_usd", 0.0)
            self.queue.append(p)
        while self.queue:
            p = self.queue.popleft()
            row = rows.proposal_row(self.run_id, self._new_id(), self.versions.get(p.base_version), p,
                                    self.best.version, self.best.metric, status="unused",
                                    error="the run stopped before it ran")
            self._record({**row, "files": p.files})  # a resume runs it (its cost was paid)
        self._flush()

    def _fill_trainers(self) -> None:
        if self._out_of_time():
            return
        self._top_up()
        while self.free and (job := self._next_job()):
            self._dispatch(job)
        if self.free and self._more_to_dispatch():
            self.count.starved += min(self.just_freed, len(self.free))
        self.just_freed = 0

    def stop(self) -> None:
        """Start nothing new; running experiments finish (or are killed by the trainers' stop())."""
        self.stopping = True

    def _down(self, kind: str, i: int) -> None:
        """An actor failed a call: a restarting actor fails every call at once, so it gets no work until it
        answers a ping (asked again with a growing pause while it does not)."""
        tries = self.down.get((kind, i), (0.0, 0))[1]
        self.down[(kind, i)] = (time.time() + min(30.0, 0.5 * 2 ** tries) if tries else 0.0, tries + 1)

    def _ping_down(self) -> None:
        asked = set(self.pings.values())
        for key, (at, _) in list(self.down.items()):
            if key not in asked and time.time() >= at:
                kind, i = key
                self.pings[self.trainers[i].ping.remote() if kind == "trainer" else
                           self.proposers[i].baseline_version.remote()] = key

    def _pinged(self, ref) -> None:
        kind, i = self.pings.pop(ref)
        if isinstance(_get(ref), Exception):
            return self._down(kind, i)
        del self.down[(kind, i)]
        if kind == "trainer":
            self.free.append(i)

    def _wait(self) -> list:
        """Block until something lands (or a tick passes), then take everything that is ready."""
        self._ping_down()
        refs = list(self.running) + list(self.proposing) + list(self.pings)
        if not refs:
            time.sleep(TICK)
            return []
        ready, rest = ray.wait(refs, num_returns=1, timeout=TICK)
        if ready and rest:
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        return ready

    def _out_of_time(self) -> bool:
        return self.stopping or (self.deadline is not None and time.time() >= self.deadline)

    def _may_start_new(self) -> bool:
        """A new candidate may start (follow-ups of started ones always may, until time is out)."""
        return (not self._out_of_time() and (self.max_experiments is None or self.count.ran < self.max_experiments)
                and self._spent("start") is None)

    def _may_ask(self) -> bool:
        """New proposals may be asked for (after --max-cost, what is queued still runs)."""
        return (self._may_start_new() and (self.max_cost is None or self.count.cost_usd < self.max_cost)
                and self._spent("ask") is None)

    def _spent(self, what: str) -> str | None:
        """Why the budget allows no more ("start": new candidates; "ask": proposals), runs in flight counted."""
        return None if self.meter is None else self.meter.stop(what, self.count.cost_usd, self._running_spend())

    def _running_spend(self) -> list[tuple[str | None, float]]:
        now = time.time()
        return [(self.gpu_models.get(f.trainer), now - f.dispatched_at) for f in self.running.values()] + self.landing

    def budget_used(self) -> dict[str, float]:
        """Fractions of the spend budgets used so far ({'cost': .., 'gpu_hours': ..}; those that are set)."""
        return {} if self.meter is None else self.meter.fractions(self.count.cost_usd, self._running_spend())

    def why_stopped(self) -> str:
        """Why the loop ended (or is ending), in words."""
        if self.aborting is not None:
            return str(self.aborting)
        if self.stopping:
            return "stopped by Ctrl-C or SIGTERM"
        if self.deadline is not None and time.time() >= self.deadline:
            return "--time-limit reached"
        if self.max_experiments is not None and self.count.ran >= self.max_experiments:
            return f"--max-experiments {self.max_experiments} reached"
        if spent := self._spent("ask"):
            return spent
        if self.max_cost is not None and self.count.cost_usd >= self.max_cost:
            return f"--max-cost ${self.max_cost:g} of proposer spend reached"
        return "no more work"

    def _more_to_dispatch(self) -> bool:
        if self._out_of_time():
            return False
        return bool(self.followups) or (self._may_start_new() and bool(self.queue or self.proposing or self._may_ask()))

    def _next_job(self) -> Job | None:
        if self.followups:
            return self.followups.popleft()
        if self.queue and self._may_start_new():
            return Job(self.queue.popleft())
        return None

    # ---- proposals ----

    def _top_up(self) -> None:
        """Keep queued + requested proposals at the queue depth, spread over the proposers."""
        if not self._may_ask():
            return
        want = self.queue_depth - len(self.queue) - len(self.proposing)
        if self.max_experiments is not None:  # never pay for proposals that cannot run
            want = min(want, self.max_experiments - self.count.ran - len(self.queue) - len(self.proposing))
        if want <= 0:
            return
        busy = collections.Counter(self.proposing.values())
        up = [k for k in range(len(self.proposers)) if ("proposer", k) not in self.down]
        # running now, and queued to run (a proposal waiting in the queue is as much "taken" as a running one)
        in_flight = [f.job.proposal.description for f in self.running.values()] + [p.description for p in self.queue]
        for _ in range(max(0, want) if up else 0):
            i = min(up, key=lambda k: busy[k])
            busy[i] += 1
            self.proposing[self.proposers[i].propose.remote(list(self.history), in_flight, self.best_ref)] = i

    def _proposed(self, ref) -> None:
        i = self.proposing.pop(ref)
        try:
            p: Proposal = ray.get(ref)
        except (RayActorError, RayTaskError) as e:
            # a proposer died (it restarts by itself) or raised: nothing was queued, so nothing is lost
            if isinstance(e, RayActorError):
                self._down("proposer", i)
            self.count.infra += 1
            self.on_event("proposer_error", self, {"error": _reason(e)})
            self._skipped_again(f"proposer error: {_reason(e)}", broken=True)
            return
        self.count.proposed += 1
        self.count.cost_usd += p.usage.get("cost_usd", 0.0)
        if p.status == "ok" and p.edit_hash in self.seen:
            p = dataclasses.replace(p, status="duplicate", error="identical code was already tried or is queued")
        base = self.policy.files_at(p.base_version) or self.best.files  # judged against what it edited
        if p.status == "ok" and (why := self.policy.check_proposal(base, p.files)):
            p = dataclasses.replace(p, status="integrity", error=why)
        if p.status != "ok":
            self._record(rows.proposal_row(self.run_id, self._new_id(), self.versions.get(p.base_version), p,
                                           self.best.version, self.best.metric))
            self.count.skipped += 1
            self.count.by_status[p.status] += 1
            self._skipped_again(f"{p.status}: {p.error}", broken=p.status == "proposer_error",
                                unusable=p.status != "duplicate")
            return
        self.skipped_in_a_row = self.broken_in_a_row = self.unusable_in_a_row = 0
        self.seen.add(p.edit_hash)
        self.queue.append(p)

    def _skipped_again(self, last: str, broken: bool = False, unusable: bool = True) -> None:
        """One more proposal that cannot run. `broken`: the proposer itself failed (not a bad or repeated edit).
        `unusable`: not a duplicate (an invalid edit, a proposer error, an integrity failure)."""
        self.skipped_in_a_row += 1
        self.unusable_in_a_row += unusable
        self.broken_in_a_row = self.broken_in_a_row + 1 if broken else 0
        if self.aborting is not None:
            return
        if self.count.ran == 0 and not self.queue and self.broken_in_a_row >= FIRST_FAILURES:
            if self.proposer_kind == "mutate":
                fix = ("make the settings it names tunable literals, or declare them under [knobs] in the "
                       "target's ar-ray.toml")
            elif self.proposer_kind == "llm":
                fix = "check its configuration (model, --base-url, API key) and the target's editable files"
            else:
                fix = "check the proposer's configuration and the target's editable files"
            self._abort(f"the first {self.broken_in_a_row} proposals all failed (last: {last[:400]}); nothing "
                        f"can run until the proposer works: {fix}")
        elif self.unusable_in_a_row >= self.max_skipped_in_a_row:
            check = ("the model, the endpoint (--base-url) and the prompt" if self.proposer_kind == "llm" else
                     "the proposer's configuration")
            self._abort(f"{self.unusable_in_a_row} proposals in a row could not be used (last: {last[:400]}); "
                        f"check {check}, and the ledger's error column (`ar-ray ledger RUN_DIR --status "
                        f"invalid_edit`). --max-unusable-in-a-row sets how many are allowed")
        elif self.skipped_in_a_row >= SKIPPED_IN_A_ROW:
            self._abort(f"{self.skipped_in_a_row} proposals in a row could not run (last: {last[:400]}); "
                        "check the proposer's configuration and the ledger's error column")

    def _abort(self, why: str) -> None:
        """The proposers cannot work: start nothing new, let what runs finish and be recorded with its real status
        (the baseline gives the run its first row: `best`, `show` and `report` work on it), then stop with `why`."""
        self.aborting = RunAborted(why)
        self.stopping = True
        if self.running:
            self.on_event("note", self, {"text": f"stopping: {why[:200]}... The {len(self.running)} running "
                                                 "experiment(s) finish first (Ctrl-C stops them now)."})

    # ---- training ----

    def _dispatch(self, job: Job) -> None:
        t = self.free.pop(0)
        if job.candidate is None:
            if job.experiment_id is None:
                job.experiment_id = self._new_id()
            if job.role == "screen":
                self.count.ran += 1
                job.parent_id = self.versions.get(job.proposal.base_version)
                self.journal.add(job.experiment_id, {"experiment_id": job.experiment_id,
                                                     "proposal": dataclasses.asdict(job.proposal)})
            # every run of the same code gets a seed of its own: a new best's repeats must not replay its lucky screen
            code = job.proposal.edit_hash or code_hash(job.proposal.files)
            seed = self.seed + (self.seeds[code] if self.policy.config.acceptance != "greedy" else 0)
            self.seeds[code] += 1
            scale = self.scales[job.rung]
            # a learned limit per scale and GPU model; the best's own runs (which teach it) get the trainer's rule
            learned = (None if job.role == "baseline" or t not in self.gpu_models else
                       self.timeouts.learned((job.rung, self.gpu_models[t]), scale.knobs))
            job.candidate = Candidate(experiment_id=job.experiment_id, base_version=job.proposal.base_version,
                                      files=job.proposal.files, seed=seed, budget_seconds=scale.budget_seconds or self.budget,
                                      knobs=scale.knobs, timeout_seconds=learned, prune=self._prune_limits(job, t))
            job.dispatched_at = time.time()
            self.count.runs += 1
        self.running[self.trainers[t].run.remote(job.candidate)] = Flight(t, job)

    def _reference_curve(self, flight: Flight, r: Result) -> None:
        """A run of the best (a baseline repeat) gives the curve new candidates are pruned against."""
        if not isinstance(r, Exception) and r.status == "ok" and flight.job.role == "baseline":
            self.references.observe(flight.job.proposal.base_version, (flight.job.rung, r.gpu_model), r.curve)

    def _prune_limits(self, job: Job, trainer: int) -> tuple[tuple[float, float], ...]:
        """Where a run may be stopped early (--prune): new candidates only; the policy's follow-ups always finish."""
        if self.prune is None or job.role != "screen":
            return ()
        return self.references.limits(self.prune, self.best.version, (job.rung, self.gpu_models.get(trainer)))

    def _landed(self, result: Result | Exception, flight: Flight) -> None:
        if isinstance(result, Exception):
            return self._requeue(flight, _reason(result))
        self.gpu_models[flight.trainer] = result.gpu_model
        if result.status == "infra" and not self.stopping:
            return self._requeue(flight, result.error_tail)
        if not self.policy.ready and flight.job.role == "screen":
            self.pending.append((flight, result))
            return
        self._decide(flight, result)
        if self.policy.ready and self.pending:
            held, self.pending = self.pending, []
            for f, r in held:
                self._decide(f, r)

    def _requeue(self, flight: Flight, why: str) -> None:
        """The trainer was lost, not the candidate's fault: run it again on the next free trainer, up to 3 times."""
        job = flight.job
        job.retries += 1
        self.count.infra += 1
        self.on_event("infra", self, {"experiment_id": job.experiment_id, "error": why})
        if job.retries <= 3 and not self.stopping:
            self.followups.appendleft(job)  # same id, same seed
        else:
            why = f"lost {job.retries} trainers while running it (last: {why})"
            self._decide(flight, Result(job.experiment_id, "infra", error_tail=why))

    def _decide(self, flight: Flight, r: Result) -> None:
        job = flight.job
        if job.role == "baseline" and job.proposal.base_version == 0 and r.status != "ok":
            self._record(self._row(flight, r, Verdict("baseline")))
            fix = ("If it only needs longer, raise --timeout." if r.status == "timeout" else
                   "The memory limit above is what to change first." if "--max-memory-gb" in r.error_tail else
                   "Fix the target (command, metric_pattern, files) and run again.")
            raise RunAborted(f"the unmodified target failed ({r.status}): {r.error_tail.strip()[-1500:]}\n"
                             f"log: {r.log_path}. {fix}")
        deterministic = self.policy.deterministic
        verdict = self.policy.on_result(r.experiment_id, job.role, job.group, job.proposal.base_version,
                                        job.proposal.files, job.parent_id, r.status, r.metric, job.rung, r.gpu_model)
        if self.policy.deterministic and not deterministic:
            self.on_event("note", self, {"text": DETERMINISTIC})
        if r.status == "ok" and (job.role == "baseline" or verdict.new_best):  # runs of the best teach the time limit
            self.timeouts.observe((job.rung, r.gpu_model), r.child_seconds)
        if r.status == "ok" and verdict.new_best:  # (the best's repeats were read as they landed)
            self.references.observe(verdict.new_best[0], (job.rung, r.gpu_model), r.curve)
        previous = self.best.files
        if verdict.new_best:
            version, files, exp_id, metric = verdict.new_best
            self.best = Baseline(version, files, exp_id, metric)
            self.versions[version] = exp_id
            self.count.kept += 1
            self._broadcast()
        elif self.policy.ready and self.best.metric != self.policy.best_mean:
            self.best = dataclasses.replace(self.best, metric=self.policy.best_mean)  # more repeats of the best
        self.followups.extend(self._job(spec, source=job.proposal) for spec in verdict.runs)
        self.count.failed += r.status not in ("ok", "pruned")
        self.count.pruned += r.status == "pruned"
        self.count.by_status[r.status] += 1
        row = self._row(flight, r, verdict)
        if verdict.new_best:  # the keep row says what was kept: the change to the previous best (in confirm mode
            added, removed = edits.diff_stats(previous, self.best.files)  # it is a confirmation run, with no diff)
            row.update(diff=edits.unified_diff(previous, self.best.files) or None, lines_added=added,
                       lines_removed=removed)
        self._record(row)

    def _row(self, flight: Flight, r: Result, verdict: Verdict) -> dict:
        gpu_usd = None if self.meter is None else self.meter.charge(r.gpu_model, r.started_at, r.ended_at,
                                                                      r.child_seconds)
        row = rows.result_row(self.run_id, flight.job.parent_id, flight.job.proposal, flight.candidate, r,
                              verdict.decision, self.best.version, self.best.metric, flight.dispatched_at,
                              self.budget or self.target.budget_seconds, gpu_cost_usd=gpu_usd)
        return rows.with_policy(row, flight.job.role, flight.job.group or flight.candidate.experiment_id,
                                verdict.numbers)

    def requeue_journal(self) -> int:
        """After a crash: run again, under their own ids, the new candidates that were in flight."""
        recorded = set(self.ledger.read().column("experiment_id").to_pylist())
        entries = []
        for e in self.journal.entries():
            if e["experiment_id"] in recorded:  # its row made it to disk just before the crash
                self.journal.remove(e["experiment_id"])
                continue
            entries.append(e)
            p = Proposal(**e["proposal"])
            self.seen.add(p.edit_hash)
            self.followups.append(Job(p, experiment_id=e["experiment_id"]))
        return len(entries)

    def _job(self, spec: RunSpec, source: Proposal | None = None, experiment_id: str | None = None) -> Job:
        what = spec.note or (_FOLLOWUP.sub("", source.description) if source else
                             "the target as shipped" if spec.base_version == 0 else "the best")
        p = Proposal(proposer="policy" if source else "baseline", base_version=spec.base_version,
                     description=f"{spec.role} of {spec.group}: {what}"[:500], files=spec.files,
                     edit_hash=code_hash(spec.files))
        if spec.role == "rebase" and source is not None:
            p = dataclasses.replace(p, diff=edits.unified_diff(self.best.files, spec.files))
        return Job(p, spec.role, spec.group, spec.parent_id, experiment_id, rung=spec.rung)

    # ---- bookkeeping ----

    def _broadcast(self) -> None:
        self.seen.add(code_hash(self.best.files))
        self.best_ref = ray.put(self.best)  # one copy in the object store, shared by every proposer
        for p in self.proposers:
            p.update.remote(self.best_ref)

    def _record(self, row: dict) -> None:
        self.unwritten.append(row)
        if self.meter is not None:
            self.meter.observe(row)
        self.history.append(attempt(row))

    def remember(self, attempts: list[Attempt]) -> None:
        """A resume: the run's earlier attempts (oldest first, rows read back from the ledger) refill the history
        and prime every proposer's memory, as if the proposers had been shown them live. One copy goes to the
        object store for all of them; a proposer that cannot take it (lost, or raising) proposes without."""
        self.history.extend(attempts[-HISTORY:])
        if not attempts or not self.proposers:
            return
        ref = ray.put(attempts)
        calls = [p.prime.remote(ref) for p in self.proposers]
        for i, call in enumerate(calls):
            try:
                ray.get(call, timeout=120)
            except (RayActorError, RayTaskError, GetTimeoutError) as e:
                self.on_event("note", self, {"text": f"proposer {i} starts without the run's earlier attempts in "
                                                     f"its memory: {_reason(e)}"})

    def _flush(self) -> None:
        """Write the rows of one round in one durable append, then report them."""
        if self.unwritten:
            batch, self.unwritten = self.unwritten, []
            self.ledger.append(batch)
            for row in batch:
                self.journal.remove(row["experiment_id"])
                self.on_event("row", self, row)

    def _new_id(self) -> str:
        self.next_id += 1
        return f"e{self.next_id - 1:05d}"


ATTEMPT_COLUMNS = ("experiment_id", "description", "status", "decision", "metric", "diff", "error", "proposer",
                   "group_id", "cost_usd", "gain", "threshold")  # the ledger columns an Attempt is made of


def attempt(row: dict) -> Attempt:
    """What proposers are shown of a ledger row: a row as `_record` gets it, or one read back from the ledger."""
    return Attempt(row["experiment_id"], row["description"] or "", row["status"], row["decision"], row.get("metric"),
                   row.get("diff") or "", row.get("error") or "", row.get("proposer") or "", row.get("group_id") or "",
                   row.get("cost_usd") or 0.0, row.get("gain"), row.get("threshold"))


def _get(ref) -> Result | Exception:
    """A trainer's answer, or the Ray error in its place (RayActorError: the trainer was lost)."""
    try:
        return ray.get(ref)
    except (RayActorError, RayTaskError) as e:
        return e


def _reason(e: Exception) -> str:
    """One readable line for a Ray error: the underlying exception when there is one."""
    cause = getattr(e, "cause", None)
    if cause is not None and cause is not e:
        return f"{type(cause).__name__}: {cause}"
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__
