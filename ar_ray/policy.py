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
  run) beats the best's mean by more than k_confirm standard errors. A screened winner made from an older best is
  first re-applied to the current best (three-way merge: a *rebase*); two concurrent
  winners thereby end up combined and the combination is what gets tested.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ar_ray import edits, merge
from ar_ray.codehash import code_hash

# An edit whose every changed line mentions only these touches the metric, not the model.
INTEGRITY = re.compile(r"seed|eval|val_|valid|result_file|AR_RESULT|bpb", re.IGNORECASE)


@dataclass(frozen=True)
class PolicyConfig:
    acceptance: str = "confirm"  # "confirm" or "greedy"
    baseline_repeats: int = 3  # runs of each new best (the first best included)
    confirm_runs: int = 2  # extra runs of a screened candidate
    k: float = 1.0  # screen: a single run's gain > k x noise (permissive: confirmation catches the noise)
    k_confirm: float = 2.0  # accept: mean gain > k_confirm x standard error of the difference
    sanity_gain: float | None = None  # gains above this need twice the confirmation runs
    min_noise: float = 1e-6  # a floor, so identical metrics do not make every gain significant
    max_rebases: int = 2


@dataclass(frozen=True)
class RunSpec:
    """A follow-up run the policy wants: these files, in this role, for this group."""

    files: dict[str, str]
    base_version: int
    role: str  # "baseline", "confirm", "rebase"
    group: str  # experiment id of the candidate the run belongs to
    parent_id: str | None


@dataclass(frozen=True)
class Verdict:
    decision: str  # baseline, keep, discard, screened, confirming, reject, conflict
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


class Policy:
    def __init__(self, config: PolicyConfig, direction: str = "min"):
        self.config = config
        self.sign = 1.0 if direction == "min" else -1.0
        self.best_version = 0
        self.best_files: dict[str, str] = {}
        self.best_id: str | None = None
        self.best_metrics: list[float] = []
        self.spread: dict[str, _Stats] = {}  # code hash -> runs of identical code (the noise pool)
        self._ss, self._dof = 0.0, 0  # pooled sum of squares and degrees of freedom, kept up to date
        self._hashes: dict[int, str] = {}  # best version -> code hash
        self.groups: dict[str, _Group] = {}
        self.versions: dict[int, dict[str, str]] = {}  # best version -> its files (rebase needs the old ones)

    # ---- estimates ----

    @property
    def ready(self) -> bool:
        """Results can be judged: the best's metric is known, and in confirm mode the noise too."""
        return bool(self.best_metrics) and (self.config.acceptance == "greedy" or self.noise() is not None)

    @property
    def best_mean(self) -> float | None:
        return sum(self.best_metrics) / len(self.best_metrics) if self.best_metrics else None

    def noise(self) -> float | None:
        """Pooled run-to-run standard deviation over every group of identical code; None before 2 repeats."""
        return max(math.sqrt(max(self._ss, 0.0) / self._dof), self.config.min_noise) if self._dof else None

    def add_run(self, code: str, metric: float) -> None:
        """One more unselected run of this code: updates its mean and the pooled spread in O(1)."""
        stats = self.spread.setdefault(code, _Stats())
        before = stats.m2
        stats.add(metric)
        self._ss += stats.m2 - before
        self._dof += stats.n > 1

    def _gain(self, metric: float, reference: float | None = None) -> float:
        return self.sign * ((self.best_mean if reference is None else reference) - metric)

    def _version_mean(self, version: int) -> float | None:
        """Mean of the unselected runs of a past best's code (what a stale candidate was built on)."""
        if version not in self._hashes:
            self._hashes[version] = code_hash(self.versions.get(version, {}))
        stats = self.spread.get(self._hashes[version])
        return stats.mean if stats else None

    def restore(self, version: int, versions: dict[int, dict[str, str]], best_id: str | None,
                best_metrics: list[float], spread: dict[str, list[float]]) -> None:
        """State from a ledger (resume): the best, its runs, every version's files, the noise pool."""
        self.best_version, self.versions, self.best_id = version, dict(versions), best_id
        self.best_files = self.versions[version]
        self.best_metrics = list(best_metrics)
        for code, metrics in spread.items():
            for m in metrics:
                self.add_run(code, m)

    def missing_repeats(self) -> list[RunSpec]:
        """After a restore: the runs of the best that never happened (e.g. a baseline cut short by a crash)."""
        missing = self._repeats() - len(self.best_metrics)
        if missing <= 0:
            return []
        gid = f"{self.best_id}-r"
        self.groups[gid] = _Group(self.best_files, self.best_version, self.best_id, "baseline", waiting=missing)
        return [RunSpec(self.best_files, self.best_version, "baseline", gid, self.best_id)] * missing

    # ---- the start ----

    def start(self, files: dict[str, str], first_id: str) -> list[RunSpec]:
        """The runs of the unmodified target: one in greedy mode, R in confirm mode."""
        self.best_files = self.versions[0] = files
        self.groups[first_id] = _Group(files, 0, None, "baseline", waiting=self._repeats())
        return [RunSpec(files, 0, "baseline", first_id, None)] * self._repeats()

    def _repeats(self) -> int:
        return 1 if self.config.acceptance == "greedy" else max(1, self.config.baseline_repeats)

    def check_proposal(self, old: dict[str, str], new: dict[str, str]) -> str | None:
        """A reason to refuse an edit before it runs: one that only touches seeds or the evaluation."""
        changed = [line[1:] for line in edits.unified_diff(old, new).splitlines()
                   if line[:1] in "+-" and not line.startswith(("+++", "---")) and line[1:].strip()]
        if changed and all(INTEGRITY.search(line) for line in changed):
            return "the edit only changes seeds or the evaluation; that games the metric instead of improving the model"
        return None

    # ---- every result ----

    def on_result(self, exp_id: str, role: str, group: str | None, base_version: int, files: dict[str, str],
                  parent_id: str | None, status: str, metric: float | None) -> Verdict:
        ok = status == "ok" and metric is not None and math.isfinite(metric)
        if ok and role != "screen":  # screening runs are selected for luck: they would inflate the spread
            self.add_run(code_hash(files), metric)
        if role == "screen":
            return self._screen(exp_id, base_version, files, parent_id, metric if ok else None)
        return self._group_run(group, metric if ok else None)

    def _numbers(self, metric: float | None = None, n: int = 1) -> dict:
        noise = self.noise()
        out = {"noise": noise, "best_mean": self.best_mean, "best_n": len(self.best_metrics)}
        if metric is not None and self.best_mean is not None:
            out["gain"] = self._gain(metric)
            if noise is not None:
                out["threshold"] = (self.config.k * noise if n == 1 else
                                    self.config.k_confirm * noise * math.sqrt(1 / n + 1 / len(self.best_metrics)))
        return out

    def _screen(self, exp_id, base_version, files, parent_id, metric) -> Verdict:
        if metric is None:
            return Verdict("discard", numbers=self._numbers())
        nums = self._numbers(metric)
        parent_mean = self._version_mean(base_version) if base_version != self.best_version else None
        if parent_mean is not None and self.config.acceptance != "greedy":
            # a stale candidate is screened against the code it edited; if its change helps there,
            # the change is re-applied to the current best below
            nums.update(gain=self._gain(metric, parent_mean), parent_mean=parent_mean)
        if self.config.acceptance == "greedy":
            if nums["gain"] > 0:
                return self._accept(exp_id, files, [metric], nums)
            return Verdict("discard", numbers=nums)
        if nums.get("threshold") is None or nums["gain"] <= nums["threshold"]:
            return Verdict("discard", numbers=nums)
        # the screening run is not part of the group's mean: it was selected for being lucky (winner's curse)
        group = _Group(files, base_version, parent_id, "confirm")
        self.groups[exp_id] = group
        if base_version != self.best_version:
            return self._rebase(exp_id, group, nums)
        n = max(1, self.config.confirm_runs) * (2 if self._insane(nums["gain"]) else 1)
        group.waiting = n
        return Verdict("screened", runs=tuple(RunSpec(files, base_version, "confirm", exp_id, parent_id)
                                               for _ in range(n)), numbers=nums)

    def _insane(self, gain: float) -> bool:
        return self.config.sanity_gain is not None and gain > self.config.sanity_gain

    def _rebase(self, gid: str, group: _Group, nums: dict) -> Verdict:
        """Re-apply the winner's change onto the current best; run the merged code from scratch."""
        merged, conflicts = merge.rebase(self._files_of(group), group.files, self.best_files)
        if conflicts or group.rebases >= self.config.max_rebases:
            del self.groups[gid]
            why = f"rebase conflict in {', '.join(conflicts)}" if conflicts else "rebased too often"
            return Verdict("conflict", numbers={**nums, "reason": why})
        if merged == self.best_files:  # the change is already in the best
            del self.groups[gid]
            return Verdict("discard", numbers={**nums, "reason": "already part of the best"})
        group.files, group.base_version, group.parent_id = merged, self.best_version, self.best_id
        group.metrics, group.role, group.rebases = [], "rebase", group.rebases + 1
        group.waiting = 1 + self.config.confirm_runs
        return Verdict("screened", runs=tuple(RunSpec(merged, self.best_version, "rebase", gid, self.best_id)
                                               for _ in range(group.waiting)), numbers=nums)

    def _files_of(self, group: _Group) -> dict[str, str]:
        return self.versions.get(group.base_version, self.best_files)

    def _group_run(self, gid: str | None, metric: float | None) -> Verdict:
        group = self.groups.get(gid)
        if group is None:  # a run of a group that already concluded (e.g. after a resume)
            return Verdict("discard", numbers=self._numbers(metric))
        group.waiting -= 1
        if metric is None:
            group.failed = True
        else:
            group.metrics.append(metric)
        if group.waiting > 0:
            return Verdict("baseline" if group.role == "baseline" else "confirming", numbers=self._numbers(metric))
        return self._conclude(gid, group)

    def _conclude(self, gid: str, group: _Group) -> Verdict:
        if group.role == "baseline":
            del self.groups[gid]
            if group.base_version == self.best_version:  # repeats of the best (its noise is pooled either way)
                self.best_metrics.extend(group.metrics)
                self.best_id = self.best_id or gid
            return Verdict("baseline", numbers=self._numbers())
        mean = sum(group.metrics) / len(group.metrics) if group.metrics else None
        nums = self._numbers(mean, n=len(group.metrics))
        nums.update(group_mean=mean, group_n=len(group.metrics))
        parent_mean = self._version_mean(group.base_version) if group.base_version != self.best_version else None
        if parent_mean is not None and mean is not None:  # judged against the code it edited, as at the screen
            nums.update(gain=self._gain(mean, parent_mean), parent_mean=parent_mean)
        if group.failed or mean is None or nums.get("threshold") is None or nums["gain"] <= nums["threshold"]:
            del self.groups[gid]
            return Verdict("reject", numbers=nums)
        if group.base_version != self.best_version:  # the best moved while we confirmed
            return self._rebase(gid, group, nums)
        del self.groups[gid]
        return self._accept(gid, group.files, group.metrics, nums)

    def _accept(self, exp_id: str, files: dict[str, str], metrics: list[float], nums: dict) -> Verdict:
        self.best_version += 1
        self.versions[self.best_version] = files
        self.best_files, self.best_id, self.best_metrics = files, exp_id, list(metrics)
        runs = ()
        missing = self._repeats() - len(metrics)
        if missing > 0:  # the new best gets its R runs too
            self.groups[f"{exp_id}-b"] = _Group(files, self.best_version, exp_id, "baseline", waiting=missing)
            runs = tuple(RunSpec(files, self.best_version, "baseline", f"{exp_id}-b", exp_id) for _ in range(missing))
        return Verdict("keep", new_best=(self.best_version, files, exp_id, sum(metrics) / len(metrics)),
                       runs=runs, numbers=nums)
