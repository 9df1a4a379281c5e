"""The proposer protocol.

A proposer turns the current best files (pushed to it whenever they change)
and a compact history into the next experiment:

    update(baseline)                                    # broadcast: the new best
    propose(history, in_flight, baseline) -> Proposal   # the full new editable files, or a failure status
    prime(history) -> int                               # a resumed run: what it tried before, before any propose

`ProposerBase` does the shared bookkeeping (current baseline, diff, hash,
syntax check); a concrete proposer implements `make_edit`. Subclasses are
plain Python; `proposers.actor` hosts any of them as a Ray actor.
"""

from __future__ import annotations

import time

from ar_ray.code import edits
from ar_ray.code.codehash import code_hash
from ar_ray.types import Attempt, Baseline, Proposal


def proposer_seed(run_seed: int, index: int, resumed_rows: int = 0) -> int:
    """The seed of proposer `index`: fixed by the run's seed in a fresh run, and a new one at each resume (from the
    number of ledger rows the run had), so a resumed proposer does not replay the proposals it made before."""
    return run_seed * 1000 + index + 7919 * max(0, resumed_rows)


class ProposalFailed(Exception):
    """Raised by make_edit when no usable proposal came out; `status` goes to the ledger."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status


class ProposerBase:
    def __init__(self, name: str, editable: tuple[str, ...], program: str = "", seed: int = 0):
        self.name = name
        self.editable = tuple(editable)
        self.program = program
        self.seed = seed
        self.baseline: Baseline | None = None

    def update(self, baseline: Baseline) -> int:
        """Take a newer best (the driver's broadcast); older versions are ignored."""
        if self.baseline is None or baseline.version > self.baseline.version:
            self.baseline = baseline
        return self.baseline.version

    def baseline_version(self) -> int:
        return -1 if self.baseline is None else self.baseline.version

    def prime(self, history: list[Attempt]) -> int:
        """A resumed run's earlier attempts, oldest first (its newest ledger rows: `PRIME_ROWS` in
        ar_ray/engine/driver.py), given once before the first `propose`. A proposer that remembers what it was
        shown folds them in as if it had been shown them live; this one remembers nothing. Returns how many
        attempts it took in."""
        return 0

    def propose(self, history: list[Attempt] = (), in_flight: list[str] = (), baseline: Baseline | None = None) -> Proposal:
        """The next experiment. `baseline`, when given, is the newest best the caller knows (a missed broadcast
        or an actor restart cannot leave a proposer without one)."""
        base = self._begin(baseline)
        t0 = time.time()
        usage: dict[str, float] = {}
        try:
            description, new_files = self.make_edit(base, list(history), list(in_flight), usage)
        except ProposalFailed as e:
            return self._failed(base, e.status, str(e), usage, t0)
        except edits.EditError as e:
            return self._failed(base, "invalid_edit", str(e), usage, t0)
        return self._conclude(base, description, new_files, usage, t0)

    def _begin(self, baseline: Baseline | None) -> Baseline:
        if baseline is not None:
            self.update(baseline)
        if self.baseline is None:
            raise RuntimeError("propose() before update(): the driver must broadcast a baseline first")
        return self.baseline

    def _conclude(self, base: Baseline, description: str, new_files: dict[str, str], usage: dict,
                  t0: float) -> Proposal:
        """The Proposal for an edit of `base` (shared by sync and async proposers)."""
        try:
            files = {**base.files, **new_files}
            if files == base.files:
                raise ProposalFailed("invalid_edit", "the edit leaves every file unchanged")
            edits.check_syntax({p: files[p] for p in new_files})
        except ProposalFailed as e:
            return self._failed(base, e.status, str(e), usage, t0)
        except edits.EditError as e:
            return self._failed(base, "invalid_edit", str(e), usage, t0)
        added, removed = edits.diff_stats(base.files, files)
        usage.setdefault("latency_s", time.time() - t0)
        return Proposal(proposer=self.name, base_version=base.version, description=description, files=files,
                        diff=edits.unified_diff(base.files, files), edit_hash=code_hash(files),
                        lines_added=added, lines_removed=removed, usage=usage)

    def _failed(self, base: Baseline, status: str, reason: str, usage: dict, t0: float) -> Proposal:
        usage.setdefault("latency_s", time.time() - t0)
        return Proposal(proposer=self.name, base_version=base.version, description="", files={},
                        status=status, error=reason, usage=usage)

    def make_edit(self, base: Baseline, history: list[Attempt], in_flight: list[str],
                  usage: dict) -> tuple[str, dict[str, str]]:
        """Return (one-line description, {path: new full text} for the changed editable files)."""
        raise NotImplementedError

