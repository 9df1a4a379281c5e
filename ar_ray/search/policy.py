"""The research decisions: what counts as an improvement when hundreds of noisy runs compete.

`Policy` sees every result as it lands and answers with a `Verdict`: the decision
for the ledger, the numbers behind it, a new best when there is one, and the
follow-up runs to schedule. It knows nothing of Ray or processes; its state can
be rebuilt by replaying the ledger's rows in order.

Two rules:
- greedy (upstream autoresearch): a run that beats the best's metric becomes the best.
- confirm (default): the best's metric is the mean of R runs with different seeds; the
  run-to-run spread (noise) is pooled from every group of identical code. A new run
  that beats the best by more than k x noise is *screened*; it is re-run with new seeds
  (confirmation) and accepted only if the mean of those re-runs (not the lucky screening
  run) beats the best's mean by more than k_confirm standard errors; a close call (above half that bar) gets more
  runs first, up to max_confirm_runs (a sequential test). A screened winner made from an older best is
  first re-applied to the current best (three-way merge: a *rebase*); two concurrent
  winners thereby end up combined and the combination is what gets tested.

Promotion ladder (confirm mode, `rungs` > 1): new candidates are screened at the cheapest
scale (rung 0); one that beats the best *at that rung* by k x that rung's noise and ranks
in the top `promote_fraction` of every result seen at the rung (asynchronous successive
halving) is *promoted* to the next rung, and so on; acceptance happens only at the top
rung, by the confirmation rule above. The best, its repeats and the noise are kept per
rung, since one code has a different metric at each scale.

Mixed hardware: the noise pool and the best's runs are also kept per GPU model; a result
is compared with the best's runs on its own GPU model when there are any (a fixed
wall-clock budget makes the hardware part of the metric); a group's gain is the mean of its runs' gains,
each on its own model.
"""

from __future__ import annotations

import collections
import fractions
import math
import re
from dataclasses import dataclass, field

from ar_ray.code import edits, merge
from ar_ray.code.codehash import code_hash
from ar_ray.search.tquantile import t_factor

# An edit whose every changed line mentions only these touches the metric, not the model.
INTEGRITY = re.compile(r"seed|eval|val_|valid|result_file|AR_RESULT|bpb", re.IGNORECASE)


@dataclass(frozen=True)
class PolicyConfig:
    acceptance: str = "confirm"  # "confirm" or "greedy"
    baseline_repeats: int = 3  # runs of each new best (the first best included)
    confirm_runs: int = 2  # extra runs of a screened candidate
    max_confirm_runs: int = 4  # an undecided confirmation adds confirm_runs more, up to this many (sequential test)
    k: float = 1.0  # screen: a single run's gain > k x noise (permissive: confirmation catches the noise)
    k_confirm: float = 2.0  # accept: mean gain > k_confirm x standard error of the difference
    sanity_gain: float | None = None  # gains above this need twice the confirmation runs
    min_noise: float = 1e-6  # a floor, so identical metrics do not make every gain significant
    max_rebases: int = 2
    rungs: int = 1  # scales of the promotion ladder, cheapest first; 1: no ladder
    promote_fraction: float = 0.25  # a rung promotes the top fraction of what it has seen
    rescreen: bool = False  # a close call at a cheap rung gets one more run there before it is dropped
    fresh_reference: bool = True  # a new best is measured by fresh repeats, not by the runs that made it win
    t_quantiles: bool = True  # bars widen by Student's t while the noise rests on few degrees of freedom
    combine: int = 3  # near-misses (rejected with a positive mean gain) merged into one candidate; 0: never

    @property
    def top(self) -> int:
        return self.rungs - 1


@dataclass(frozen=True)
class RunSpec:
    """A follow-up run the policy wants: these files, in this role, for this group."""

    files: dict[str, str]
    base_version: int
    role: str  # "baseline", "confirm", "rebase", "promote"
    group: str  # experiment id of the candidate the run belongs to
    parent_id: str | None
    rung: int = 0  # scale of the promotion ladder the run uses (the top rung is the full scale)
    note: str = ""  # what the run tests, when it is not its group's own proposal (a combination of near-misses)


@dataclass(frozen=True)
class Verdict:
    decision: str  # baseline, keep, discard, screened, promoted, confirming, reject, conflict
    new_best: tuple[int, dict[str, str], str, float] | None = None  # (version, files, experiment id, metric)
    runs: tuple[RunSpec, ...] = ()
    numbers: dict = field(default_factory=dict)  # noise, gain, threshold, group_mean, group_n


@dataclass
class _Stats:
    """Count, mean and sum of squared deviations of a stream of values (Welford)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)


@dataclass
class _Group:
    files: dict[str, str]
    base_version: int  # best version the files are built on
    parent_id: str | None
    role: str
    metrics: list[float] = field(default_factory=list)
    waiting: int = 0
    failed: bool = False
    rebases: int = 0
    rung: int = 0
    gpus: list[str] = field(default_factory=list)  # GPU model of each run in `metrics`
    cap: int = 0  # most runs a close call may get (sequential confirmation); 0: the policy's default
    rescreened: bool = False  # a close call at a cheap rung already got its second run there
    note: str = ""


@dataclass(frozen=True)
class _NearMiss:
    """A candidate rejected with a positive mean gain: too small to prove alone, perhaps not in a combination."""

    group: str
    files: dict[str, str]
    base_version: int
    score: float  # mean gain over the bar it missed


MAX_NEAR = 16  # near-misses kept (the best scores)


class Policy:
    def __init__(self, config: PolicyConfig, direction: str = "min"):
        self.config = config
        self.sign = 1.0 if direction == "min" else -1.0
        self.best_version = 0
        self.best_files: dict[str, str] = {}
        self.best_id: str | None = None
        self.best_runs: dict[int, list[tuple[float, str]]] = {}  # rung -> (metric, GPU model) of the best's runs
        # a rung's runs of an earlier best, used there until the new best's own repeats at that rung land
        self.previous_runs: dict[int, list[tuple[float, str]]] = {}
        self.spread: dict[tuple, _Stats] = {}  # (code hash, rung, GPU model) -> runs of identical code (the noise pool)
        self.code_means: dict[tuple, _Stats] = {}  # (code hash, rung) -> the same runs, every GPU model together
        self._ss: dict[int, float] = {}  # rung -> pooled sum of squares, kept up to date
        self._dof: dict[int, int] = {}  # rung -> pooled degrees of freedom
        self.rung_gains: dict[int, list[float]] = {}  # every gain seen at a rung (the promotion rule ranks in it)
        self._hashes: dict[int, str] = {}  # best version -> code hash
        self.groups: dict[str, _Group] = {}
        self.gpu = ""  # GPU model of the result being judged
        self.versions: dict[int, dict[str, str]] = {}  # best version -> its files (rebase needs the old ones)
        self.near: list[_NearMiss] = []  # rejected with a positive mean gain, waiting to be combined
        self.deterministic = False  # the first best's repeats were identical: one run tells all (no confirmation)

    # ---- estimates ----

    @property
    def ready(self) -> bool:
        """Results can be judged: the best's metric is known at every rung, and in confirm mode the noise too.
        Right after a new best, an earlier best's runs stand in at a lower rung (`runs_at`), exactly as when a
        result is judged: waiting for the new best's own repeats would hold screens forever if they never land."""
        rungs = range(self.config.rungs)
        return all(self.runs_at(r) for r in rungs) and (
            self.config.acceptance == "greedy" or all(self.noise(r) is not None for r in rungs))

    @property
    def best_metrics(self) -> list[float]:
        """The best's runs at the full scale (the top rung)."""
        return [m for m, _ in self.best_runs.get(self.config.top, [])]

    @property
    def best_mean(self) -> float | None:
        return self.mean_at(self.config.top)

    def runs_at(self, rung: int) -> list[tuple[float, str]]:
        """The best's runs at a rung; right after a new best, an earlier best's until its own have landed (a
        promotion still in flight at a lower rung is judged against those)."""
        return self.best_runs.get(rung) or self.previous_runs.get(rung, [])

    def mean_at(self, rung: int, gpu: str = "") -> float | None:
        """Mean of the best's runs at a rung: those on `gpu` when there are any, else all of them."""
        runs = self.runs_at(rung)
        same = [m for m, g in runs if g == gpu] or [m for m, _ in runs]
        return sum(same) / len(same) if same else None

    def noise(self, rung: int | None = None) -> float | None:
        """Pooled run-to-run standard deviation over every group of identical code (per rung, within one GPU
        model); None before 2 repeats."""
        rung = self.config.top if rung is None else rung
        dof = self._dof.get(rung, 0)
        return max(math.sqrt(max(self._ss[rung], 0.0) / dof), self.config.min_noise) if dof else None

    def add_run(self, code: str, metric: float, rung: int | None = None, gpu: str = "") -> None:
        """One more unselected run of this code: updates its mean and the pooled spread in O(1)."""
        rung = self.config.top if rung is None else rung
        stats = self.spread.setdefault((code, rung, gpu), _Stats())
        before = stats.m2
        stats.add(metric)
        self.code_means.setdefault((code, rung), _Stats()).add(metric)
        self._ss[rung] = self._ss.get(rung, 0.0) + stats.m2 - before
        self._dof[rung] = self._dof.get(rung, 0) + (stats.n > 1)

    def _gain(self, metric: float, reference: float | None = None) -> float:
        return self.sign * ((self.best_mean if reference is None else reference) - metric)

    def _version_mean(self, version: int, rung: int | None = None) -> float | None:
        """Mean of the unselected runs of a past best's code (what a stale candidate was built on): on the GPU
        model being judged when it has any, else on all of them."""
        rung = self.config.top if rung is None else rung
        if version not in self._hashes:
            self._hashes[version] = code_hash(self.versions.get(version, {}))
        stats = self.spread.get((self._hashes[version], rung, self.gpu)) or self.code_means.get((self._hashes[version], rung))
        return stats.mean if stats else None

    def restore(self, version: int, versions: dict[int, dict[str, str]], best_id: str | None,
                best_runs: dict[int, list[tuple[float, str]]], spread: dict[tuple, list[float]],
                rung_gains: dict[int, list[float]] | None = None) -> None:
        """State from a ledger (resume): the best, its runs per rung, every version's files, the noise pool
        ((code hash, rung, GPU model) -> metrics), and the gains each lower rung has seen."""
        self.best_version, self.versions, self.best_id = version, dict(versions), best_id
        self.best_files = self.versions[version]
        self.best_runs = {r: list(runs) for r, runs in best_runs.items()}
        self.rung_gains = {r: list(g) for r, g in (rung_gains or {}).items()}
        for (code, rung, gpu), metrics in spread.items():
            for m in metrics:
                self.add_run(code, m, rung, gpu)
        shipped = code_hash(self.versions.get(0, {}))
        first = [m for (code, rung, _), ms in spread.items() if code == shipped and rung == self.config.top for m in ms]
        self.deterministic = (self.config.acceptance != "greedy" and len(first) >= max(2, self.config.baseline_repeats)
                              and max(first) == min(first))  # as live: once the first best's repeats are all in

    def missing_repeats(self) -> list[RunSpec]:
        """After a restore: the runs of the best that never happened (e.g. a baseline cut short by a crash)."""
        specs = []
        for rung in range(self.config.rungs):
            missing = self._repeats() - len(self.best_runs.get(rung, []))
            if missing > 0:
                gid = f"{self.best_id}-r{rung}"
                self.groups[gid] = _Group(self.best_files, self.best_version, self.best_id, "baseline",
                                          waiting=missing, rung=rung)
                specs += [RunSpec(self.best_files, self.best_version, "baseline", gid, self.best_id, rung)] * missing
        return specs

    def restore_group(self, gid: str, files: dict[str, str], base_version: int, parent_id: str | None, role: str,
                      runs: list[tuple[float | None, str]], missing: int, *, cap: int = 0, rebases: int = 0,
                      note: str = "") -> list[RunSpec]:
        """After a restore: a confirmation group (role confirm or rebase, at the top rung) that was open when the
        run stopped, with the runs it already has ((metric or None for a failed run, GPU model); its screening
        run not among them, as live) and `missing` runs still to come. Returns those runs; the group concludes
        as it would have when the last lands."""
        group = _Group(files, base_version, parent_id, role, waiting=missing, rung=self.config.top, cap=cap,
                       rebases=rebases, note=note)
        for metric, gpu in runs:
            if metric is None:
                group.failed = True
            else:
                group.metrics.append(metric)
                group.gpus.append(gpu)
        self.groups[gid] = group
        return [RunSpec(files, base_version, role, gid, parent_id, group.rung, note) for _ in range(missing)]

    # ---- the start ----

    def start(self, files: dict[str, str], first_id: str) -> list[RunSpec]:
        """The runs of the unmodified target: one in greedy mode, R in confirm mode; at every rung of a ladder."""
        self.best_files = self.versions[0] = files
        specs = []
        for rung in reversed(range(self.config.rungs)):  # the full scale first: its first run names the group
            gid = first_id if rung == self.config.top else f"{first_id}-r{rung}"
            self.groups[gid] = _Group(files, 0, None, "baseline", waiting=self._repeats(), rung=rung)
            specs += [RunSpec(files, 0, "baseline", gid, None, rung)] * self._repeats()
        return specs

    def _repeats(self) -> int:
        return 1 if self._one_run else max(1, self.config.baseline_repeats)

    @property
    def _one_run(self) -> bool:
        """One run judges a candidate: greedy (by choice), or a deterministic target (a repeat tells nothing new)."""
        return self.config.acceptance == "greedy" or self.deterministic

    def check_proposal(self, old: dict[str, str], new: dict[str, str]) -> str | None:
        """A reason to refuse an edit before it runs: one that only touches seeds or the evaluation."""
        changed = [line[1:] for line in edits.unified_diff(old, new).splitlines()
                   if line[:1] in "+-" and not line.startswith(("+++", "---")) and line[1:].strip()]
        if changed and all(INTEGRITY.search(line) for line in changed):
            return "the edit only changes seeds or the evaluation; that games the metric instead of improving the model"
        return None

    def files_at(self, version: int) -> dict[str, str] | None:
        """The files of a best version (what a proposal made from it edited); None for a version never seen."""
        return self.versions.get(version)

    # ---- every result ----

    def on_result(self, exp_id: str, role: str, group: str | None, base_version: int, files: dict[str, str],
                  parent_id: str | None, status: str, metric: float | None, rung: int | None = None,
                  gpu: str = "") -> Verdict:
        """Judge one run. `rung`: the ladder scale it ran at (default: the top one); `gpu`: its GPU model."""
        rung = self.config.top if rung is None else rung
        ok = status == "ok" and metric is not None and math.isfinite(metric)
        self.gpu = gpu
        if ok and role != "screen":  # screening runs are selected for luck: they would inflate the spread
            self.add_run(code_hash(files), metric, rung, gpu)
        if role == "screen":
            return self._screen(exp_id, base_version, files, parent_id, metric if ok else None, rung)
        return self._group_run(group, metric if ok else None)

    def _numbers(self, runs: list[tuple[float, str]] = (), rung: int | None = None, screen: bool = False) -> dict:
        """The numbers behind a decision on `runs` ((metric, GPU model) of one code at one rung): their mean gain
        over the best, each run judged against the best's runs on its own GPU model, and the gain needed.
        `screen`: one run picked among many, which only earns more runs: k x noise (confirmation catches the
        noise). Otherwise k (below the top rung: a bigger run is at stake) or k_confirm (acceptance) standard
        errors of the difference, whatever the number of runs."""
        rung = self.config.top if rung is None else rung
        noise, best_mean, best_n = self.noise(rung), self.mean_at(rung, self.gpu), len(self.runs_at(rung))
        out = {"noise": noise, "best_mean": best_mean, "best_n": best_n}
        if runs and best_mean is not None:
            n = len(runs)
            best_mean, ref_var, best_n = self._reference(rung, [g for _, g in runs])
            out.update(best_mean=best_mean, best_n=best_n, gain=self._gain(sum(m for m, _ in runs) / n, best_mean))
            if noise is not None:
                k = self.config.k if screen or rung < self.config.top else self.config.k_confirm
                if self.config.t_quantiles:  # the noise is an estimate: a bar of k sigmas at its error rate
                    k = t_factor(k, self._dof.get(rung, 0))
                out["threshold"] = k * noise if screen else k * noise * math.sqrt(1 / n + ref_var)
        return out

    def _reference(self, rung: int, gpus: list[str]) -> tuple[float, float, int]:
        """What runs on these GPU models are compared with. The mean gain of the runs, each against the best's
        mean on its own model (all of the best's runs where it has none there, as in `mean_at`), is the mean of
        those per-run references minus the runs' mean. Returns that reference; its variance in units of noise²
        (a weighted sum of the best's runs: the sum of the squared weights; 1 / best_n on a single model); and
        how many of the best's runs it uses."""
        best = self.runs_at(rung)
        models = {g for _, g in best}
        shares = collections.Counter(g if g in models else None for g in gpus)  # None: a model the best lacks
        reference, weights = 0.0, {}
        for model, count in shares.items():
            used = [j for j, (_, g) in enumerate(best) if model is None or g == model]
            reference += count / len(gpus) * sum(best[j][0] for j in used) / len(used)
            for j in used:  # exact fractions: a single model gives exactly the 1 / best_n of the plain formula
                weights[j] = weights.get(j, 0) + fractions.Fraction(count, len(gpus) * len(used))
        return reference, float(sum(w * w for w in weights.values())), len(weights)

    def _screen(self, exp_id, base_version, files, parent_id, metric, rung) -> Verdict:
        if metric is None:
            return Verdict("discard", numbers=self._numbers(rung=rung))
        nums = self._numbers([(metric, self.gpu)], rung, screen=True)
        parent_mean = self._version_mean(base_version, rung) if base_version != self.best_version else None
        if parent_mean is not None and self.config.acceptance != "greedy":
            # a stale candidate is screened against the code it edited; if its change helps there,
            # the change is re-applied to the current best below
            nums.update(gain=self._gain(metric, parent_mean), parent_mean=parent_mean)
        if self._one_run:
            if nums["gain"] <= 0:
                return Verdict("discard", numbers=nums)
            if base_version != self.best_version:  # made from an older best: keeping it whole would undo what was
                group = _Group(files, base_version, parent_id, "rebase", rung=rung)  # kept since, so re-apply it
                self.groups[exp_id] = group
                return self._rebase(exp_id, group, nums)
            return self._accept(exp_id, files, [metric], nums)
        if rung < self.config.top:
            return self._promote(exp_id, _Group(files, base_version, parent_id, "promote", [metric], rung=rung,
                                                gpus=[self.gpu]), nums)
        if nums.get("threshold") is None or nums["gain"] <= nums["threshold"]:
            return Verdict("discard", numbers=nums)
        # the screening run is not part of the group's mean: it was selected for being lucky (winner's curse)
        group = _Group(files, base_version, parent_id, "confirm", rung=rung)
        self.groups[exp_id] = group
        if base_version != self.best_version:
            return self._rebase(exp_id, group, nums)
        n = max(1, self.config.confirm_runs) * (2 if self._insane(nums["gain"]) else 1)
        group.waiting = n
        group.cap = max(self.config.max_confirm_runs, n) * (2 if self._insane(nums["gain"]) else 1)
        return Verdict("screened", runs=tuple(RunSpec(files, base_version, "confirm", exp_id, parent_id)
                                               for _ in range(n)), numbers=nums)

    def _promote(self, gid: str, group: _Group, nums: dict) -> Verdict:
        """Asynchronous successive halving: a result at a lower rung moves up if it beats the best there by
        k x noise and ranks in the top `promote_fraction` of every gain seen at that rung."""
        gains = self.rung_gains.setdefault(group.rung, [])
        if not group.rescreened:  # a second look at the same candidate is not a new result at the rung
            gains.append(nums["gain"])
        rank = sum(g > nums["gain"] for g in gains)  # results better than this one
        nums = {**nums, "rank": rank, "seen": len(gains)}
        if nums.get("threshold") is None or nums["gain"] <= nums["threshold"] \
                or rank >= max(1, math.floor(self.config.promote_fraction * len(gains))):
            if (self.config.rescreen and not group.rescreened and nums.get("threshold") is not None
                    and nums["gain"] > 0.5 * nums["threshold"]):  # a close call: one more run at this rung
                group.rescreened, group.waiting, self.groups[gid] = True, 1, group
                return Verdict("confirming", runs=(RunSpec(group.files, group.base_version, "promote", gid,
                                                           group.parent_id, group.rung),),
                               numbers={**nums, "reason": "close call at a cheap rung: one more run there"})
            self.groups.pop(gid, None)
            return Verdict("discard", numbers=nums)
        group.rescreened = False
        group.rung += 1
        group.metrics, group.gpus, group.role = [], [], "promote"
        group.waiting = max(1, self.config.confirm_runs) if group.rung == self.config.top else 1
        self.groups[gid] = group
        return Verdict("promoted", runs=tuple(RunSpec(group.files, group.base_version, "promote", gid, group.parent_id,
                                                      group.rung) for _ in range(group.waiting)), numbers=nums)

    def _undecided(self, group: _Group, nums: dict) -> bool:
        """Sequential confirmation: a mean gain between half the threshold and the threshold is too close to
        call; more runs (up to max_confirm_runs) shrink the standard error instead of rejecting a real gain."""
        return (group.role in ("confirm", "rebase", "promote") and len(group.metrics) < self._cap(group)
                and nums["gain"] > 0.5 * nums["threshold"])

    def _cap(self, group: _Group) -> int:
        return group.cap or max(self.config.max_confirm_runs, self.config.confirm_runs)

    def _more_runs(self, gid: str, group: _Group, nums: dict) -> Verdict:
        group.waiting = min(max(1, self.config.confirm_runs), self._cap(group) - len(group.metrics))
        return Verdict("confirming", runs=tuple(RunSpec(group.files, group.base_version, group.role, gid, group.parent_id,
                                                        group.rung, group.note) for _ in range(group.waiting)),
                       numbers={**nums, "reason": "too close to call: more runs"})

    def _near_miss(self, gid: str, group: _Group, nums: dict) -> tuple[RunSpec, ...]:
        """Keep a rejected candidate whose mean gain was positive; once `combine` of them are kept, test their
        changes together on the current best. Small real gains add up where each alone is lost in the noise;
        placebos add nothing, and the combination faces the same confirmation bar on fresh runs."""
        if (not self.config.combine or group.failed or group.role not in ("confirm", "rebase")
                or not nums.get("threshold") or nums.get("gain", 0.0) <= 0):
            return ()
        self.near.append(_NearMiss(gid, group.files, group.base_version, nums["gain"] / nums["threshold"]))
        return self._combine() if len(self.near) >= self.config.combine else ()

    def _combine(self) -> tuple[RunSpec, ...]:
        files, used, left = dict(self.best_files), [], []
        for near in sorted(self.near, key=lambda n: -n.score):
            merged, conflicts = merge.rebase(self.versions.get(near.base_version, self.best_files), near.files, files)
            if conflicts:  # (e.g. the same knob as a better near-miss): it may join a later combination
                left.append(near)
            elif merged != files and not self.check_proposal(files, merged):
                files = merged
                used.append(near)
        self.near = left[:MAX_NEAR]
        if len(used) < 2:  # one change alone was already judged (or none is left that is not in the best)
            self.near += used
            return ()
        gid = "+".join(n.group for n in used)
        note = f"near-misses {', '.join(n.group for n in used)} combined"
        n = max(1, self.config.confirm_runs)
        self.groups[gid] = _Group(files, self.best_version, self.best_id, "confirm", waiting=n, rung=self.config.top,
                                  note=note)
        return tuple(RunSpec(files, self.best_version, "confirm", gid, self.best_id, self.config.top, note)
                     for _ in range(n))

    def _insane(self, gain: float) -> bool:
        return self.config.sanity_gain is not None and gain > self.config.sanity_gain

    def _rebase(self, gid: str, group: _Group, nums: dict) -> Verdict:
        """Re-apply the winner's change onto the current best; run the merged code from scratch."""
        merged, conflicts = merge.rebase(self._files_of(group), group.files, self.best_files)
        # the merge is code nobody checked: re-applied onto the best, a change (e.g. one made from an older best
        # that only moved a seed) can come down to seeds or the evaluation alone, which the integrity gate refuses
        refused = None if conflicts else self.check_proposal(self.best_files, merged)
        if conflicts or refused or group.rebases >= self.config.max_rebases:
            del self.groups[gid]
            why = (f"rebase conflict in {', '.join(conflicts)}" if conflicts else
                   f"merged onto the current best, {refused}" if refused else "rebased too often")
            return Verdict("conflict", numbers={**nums, "reason": why})
        if merged == self.best_files:  # the change is already in the best
            del self.groups[gid]
            return Verdict("discard", numbers={**nums, "reason": "already part of the best"})
        group.files, group.base_version, group.parent_id = merged, self.best_version, self.best_id
        group.metrics, group.gpus, group.role, group.rebases = [], [], "rebase", group.rebases + 1
        group.waiting, group.rung = 1 if self._one_run else max(1, self.config.confirm_runs), self.config.top
        return Verdict("screened", runs=tuple(RunSpec(merged, self.best_version, "rebase", gid, self.best_id, group.rung,
                                                       group.note) for _ in range(group.waiting)), numbers=nums)

    def _files_of(self, group: _Group) -> dict[str, str]:
        return self.versions.get(group.base_version, self.best_files)

    def _group_run(self, gid: str | None, metric: float | None) -> Verdict:
        group = self.groups.get(gid)
        if group is None:  # a run of a group that already concluded (e.g. after a resume)
            return Verdict("discard", numbers=self._numbers([(metric, self.gpu)] if metric is not None else []))
        group.waiting -= 1
        if metric is None:
            group.failed = True
        else:
            group.metrics.append(metric)
        if metric is not None:
            group.gpus.append(self.gpu)
        if group.waiting > 0:
            return Verdict("baseline" if group.role == "baseline" else "confirming",
                           numbers=self._numbers([(metric, self.gpu)] if metric is not None else [], group.rung))
        return self._conclude(gid, group)

    def _conclude(self, gid: str, group: _Group) -> Verdict:
        if group.role == "baseline":
            del self.groups[gid]
            if group.base_version == self.best_version:  # repeats of the best (its noise is pooled either way)
                self.best_runs.setdefault(group.rung, []).extend(zip(group.metrics, group.gpus))
                self.best_id = self.best_id or gid
                first = [m for m, _ in self.best_runs[group.rung]]  # (a resume's last repeat joins the earlier)
                if self.best_version == 0 and len(first) > 1 and not group.failed:
                    # different seeds, the very same metric: the target ignores its seed (e.g. a fixed number of
                    # deterministic steps); from now on one run per candidate and any strict gain is kept
                    self.deterministic = max(first) == min(first)
            return Verdict("baseline", numbers=self._numbers(rung=group.rung))
        mean = sum(group.metrics) / len(group.metrics) if group.metrics else None
        if self._one_run:  # greedy or deterministic: the one run of a rebased winner decides, against the best
            nums = {**self._numbers(list(zip(group.metrics, group.gpus)), group.rung), "group_mean": mean,
                    "group_n": len(group.metrics)}
            if group.failed or mean is None or nums["gain"] <= 0:
                del self.groups[gid]
                return Verdict("reject", numbers=nums)
            if group.base_version != self.best_version:  # the best moved again meanwhile
                return self._rebase(gid, group, nums)
            del self.groups[gid]
            return self._accept(gid, group.files, group.metrics, nums, group.gpus)
        # a lone promotion run below the top rung is that rung's screen (README: k x that rung's noise); a second
        # look there (rescreen), and every confirmation or top-rung group, however small, faces standard errors
        screen = group.role == "promote" and group.rung < self.config.top and not group.rescreened
        nums = self._numbers(list(zip(group.metrics, group.gpus)), group.rung, screen)
        nums.update(group_mean=mean, group_n=len(group.metrics))
        if group.role == "promote" and group.rung < self.config.top:  # an intermediate rung: up again, or out
            if group.failed or mean is None:
                del self.groups[gid]
                return Verdict("reject", numbers=nums)
            return self._promote(gid, group, nums)
        parent_mean = (self._version_mean(group.base_version, group.rung)
                       if group.base_version != self.best_version else None)
        if parent_mean is not None and mean is not None:  # judged against the code it edited, as at the screen
            nums.update(gain=self._gain(mean, parent_mean), parent_mean=parent_mean)
        if group.failed or mean is None or nums.get("threshold") is None or nums["gain"] <= nums["threshold"]:
            if not group.failed and self._undecided(group, nums):
                return self._more_runs(gid, group, nums)
            del self.groups[gid]
            return Verdict("reject", runs=self._near_miss(gid, group, nums), numbers=nums)
        if group.base_version != self.best_version:  # the best moved while we confirmed
            return self._rebase(gid, group, nums)
        del self.groups[gid]
        return self._accept(gid, group.files, group.metrics, nums, group.gpus)

    def _accept(self, exp_id: str, files: dict[str, str], metrics: list[float], nums: dict,
                gpus: list[str] | None = None) -> Verdict:
        self.best_version += 1
        self.versions[self.best_version] = files
        top = self.config.top
        self.best_files, self.best_id = files, exp_id
        self.previous_runs.update({r: runs for r, runs in self.best_runs.items() if runs and r != top})
        deciding = list(zip(metrics, gpus or [self.gpu] * len(metrics)))
        if self.config.fresh_reference and not self._one_run:
            # the runs that made it win were selected for passing (winner's curse): they stand in as the
            # reference only until its fresh repeats land, which alone measure it from then on
            self.best_runs, self.previous_runs[top] = {}, deciding
        else:
            self.best_runs = {top: deciding}
        runs = []
        for rung in reversed(range(self.config.rungs)):  # the new best gets its R runs at every rung
            missing = self._repeats() - len(self.best_runs.get(rung, []))
            if missing > 0:
                gid = f"{exp_id}-b" if rung == top else f"{exp_id}-b{rung}"
                self.groups[gid] = _Group(files, self.best_version, exp_id, "baseline", waiting=missing, rung=rung)
                runs += [RunSpec(files, self.best_version, "baseline", gid, exp_id, rung) for _ in range(missing)]
        return Verdict("keep", new_best=(self.best_version, files, exp_id, sum(metrics) / len(metrics)),
                       runs=tuple(runs), numbers=nums)
