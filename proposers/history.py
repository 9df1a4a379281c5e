"""What was tried and how it did: an LLM proposer's memory of a run, folded into prompt text.

The driver hands each proposal the last few dozen ledger rows; a night holds hundreds. `Memory` keeps one
`Tried` per candidate from every row it was ever shown (a follow-up run updates its candidate: a confirmation's
keep or reject), and renders three things for the prompt:

- `summary_lines`: every candidate grouped by what its diff touched (the names assigned on its changed lines,
  else the first changed line), with the values tried and how each did, so a model sees at a glance that
  LEARNING_RATE = 0.004 was already tried and lost, long after that row left the recent history;
- `near_misses`: candidates that looked better than the best of their time but were not proven: screened and
  then rejected by their confirmation runs, a conflict on rebase, or a close call at the screen (a gain above
  half the bar); those whose added lines are all already in the current best are left out;
- `combine_request`: the text asking for one edit that merges two or three near-misses touching different
  names, with their changed lines.

Plain functions of plain data: no Ray, no HTTP.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ar_ray.types import Attempt

MAX_TRIED = 5000  # candidates remembered (the oldest are forgotten first)
MAX_VALUES = 8  # values listed per outcome in a summary line
MAX_LINE = 400  # characters of one summary line
MAX_NEAR = 6  # near-misses offered to the prompt
MAX_NEAR_LINES = 8  # changed lines shown per near-miss

# outcome of a candidate, best first (the summary lists them in this order)
OUTCOMES = ("kept", "near miss", "pending", "worse", "failed", "refused")
_ASSIGN = re.compile(r"^\s*(?:self\.)?([A-Za-z_][\w.]*)\s*(?::\s*[^=]+)?=(?!=)\s*(.*?)\s*(?:#.*)?$")
_ARG = re.compile(r"add_argument\(\s*['\"]--([\w-]+)['\"].*?default\s*=\s*([^,)]+)")


def changed_lines(diff: str) -> tuple[list[str], list[str]]:
    """(removed, added) lines of a unified diff, without the +/- and without blank lines."""
    removed, added = [], []
    for line in (diff or "").splitlines():
        if line.startswith(("+++", "---")):
            continue
        if line.startswith("-") and line[1:].strip():
            removed.append(line[1:])
        elif line.startswith("+") and line[1:].strip():
            added.append(line[1:])
    return removed, added


def _assignment(line: str) -> tuple[str, str] | None:
    m = _ARG.search(line)
    if m:
        return m.group(1).replace("-", "_"), m.group(2).strip()
    m = _ASSIGN.match(line)
    if m and not line.lstrip().startswith(("def ", "class ", "return ", "if ", "for ", "while ", "assert ")):
        return m.group(1), m.group(2)
    return None


def touched(diff: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the names a diff touches, its new values as 'NAME = value'). A diff that assigns nothing is named by
    its first changed line ('~ x * LR * 0.5'), so the same edit elsewhere groups with it."""
    removed, added = changed_lines(diff)
    names: list[str] = []
    values: list[str] = []
    for line in removed + added:
        a = _assignment(line)
        if a and a[0] not in names:
            names.append(a[0])
    for line in added:
        a = _assignment(line)
        if a:
            values.append(f"{a[0]} = {_clip(a[1], 40)}")
    if not names:
        first = (removed or added or [""])[0]
        names = ["~ " + _clip(" ".join(first.split()), 50)] if first.strip() else []
        values = [_clip(" ".join(added[0].split()), 60)] if added else []
    return tuple(sorted(names)), tuple(values)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


@dataclass
class Tried:
    """One candidate: a proposal and what its runs (the screen and any follow-up) made of it."""

    experiment_id: str
    description: str
    diff: str
    knobs: tuple[str, ...]
    values: tuple[str, ...]
    outcome: str  # one of OUTCOMES
    detail: str = ""  # how it did, in words ('screened, rejected after confirmation')
    gain: float | None = None
    threshold: float | None = None
    seq: int = 0  # order seen

    @property
    def score(self) -> float:
        """The gain over the bar it faced (near-misses are ranked by it)."""
        if self.gain is None or not self.threshold:
            return 0.0
        return self.gain / self.threshold


@dataclass
class Memory:
    items: dict[str, Tried] = field(default_factory=dict)
    seen_rows: set[str] = field(default_factory=set)
    _seq: int = 0

    def ingest(self, history: list[Attempt]) -> None:
        """Fold rows in (a row seen before is skipped: the driver's window overlaps from call to call)."""
        for a in history:
            if a.experiment_id in self.seen_rows:
                continue
            self.seen_rows.add(a.experiment_id)
            if a.group and a.group != a.experiment_id:
                if a.group in self.items:
                    self._follow_up(self.items[a.group], a)
                continue
            if a.decision == "baseline" or a.proposer in ("policy", "baseline"):
                continue
            self._new(a)
        if len(self.items) > MAX_TRIED:
            for key in sorted(self.items, key=lambda k: self.items[k].seq)[: len(self.items) - MAX_TRIED]:
                del self.items[key]

    def _new(self, a: Attempt) -> None:
        if a.status == "duplicate" or (a.decision == "skip" and not a.diff):
            return  # a repeat of a candidate already here, or an answer that never became an edit
        knobs, values = touched(a.diff)
        self._seq += 1
        t = Tried(a.experiment_id, a.description, a.diff, knobs, values, "pending", seq=self._seq,
                  gain=a.gain, threshold=a.threshold)
        if a.decision == "skip":  # refused before it ran (integrity: it only touched seeds or the evaluation)
            t.outcome, t.detail = "refused", a.status
        elif a.status != "ok":
            t.outcome, t.detail = "failed", a.status
        elif a.decision == "keep":
            t.outcome, t.detail = "kept", "kept"
        elif a.decision in ("screened", "promoted", "confirming"):
            t.outcome, t.detail = "pending", "screened, being confirmed"
        elif a.decision == "conflict":
            t.outcome, t.detail = "near miss", "screened, then its rebase onto a newer best conflicted"
        elif _close(a.gain, a.threshold):
            t.outcome, t.detail = "near miss", "close call at the screen"
        else:
            t.outcome, t.detail = "worse", "no better than the best" if (a.gain or 0) <= 0 else "not enough better"
        self.items[a.experiment_id] = t

    def _follow_up(self, t: Tried, a: Attempt) -> None:
        if a.gain is not None:
            t.gain, t.threshold = a.gain, a.threshold
        if a.decision == "keep":
            t.outcome, t.detail = "kept", "kept after confirmation"
        elif a.decision in ("reject", "conflict"):
            t.outcome = "near miss"
            t.detail = ("screened, then rejected by its confirmation runs" if a.decision == "reject" else
                        "screened, then its rebase onto a newer best conflicted")

    # ---- prompt text ----

    def summary_lines(self) -> list[str]:
        """One line per knob group, the groups tried most first: how many times, and each value by outcome."""
        groups: dict[tuple[str, ...], list[Tried]] = {}
        for t in self.items.values():
            if t.knobs:
                groups.setdefault(t.knobs, []).append(t)
        lines = []
        for knobs, ts in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            parts = []
            for outcome in OUTCOMES:
                mine = sorted((t for t in ts if t.outcome == outcome), key=lambda t: t.seq)
                if not mine:
                    continue
                shown = []
                for t in mine[-MAX_VALUES:]:
                    what = "; ".join(v.split(" = ", 1)[1] if len(knobs) == 1 and " = " in v else v
                                     for v in t.values) or _clip(t.description, 60)
                    shown.append(f"{what} ({t.experiment_id})" if outcome in ("kept", "near miss") else what)
                more = f" +{len(mine) - MAX_VALUES} more" if len(mine) > MAX_VALUES else ""
                parts.append(f"{outcome}: " + ", ".join(shown) + more)
            name = ", ".join(knobs)
            lines.append(_clip(f"- {name} ({len(ts)} tried): " + "; ".join(parts), MAX_LINE))
        return lines

    def near_misses(self, best_files: dict[str, str] | None = None, n: int = MAX_NEAR) -> list[Tried]:
        """The near-misses not already part of the best, best score first."""
        current = set()
        for text in (best_files or {}).values():
            current.update(line.strip() for line in text.splitlines())
        out = []
        for t in self.items.values():
            if t.outcome != "near miss":
                continue
            _, added = changed_lines(t.diff)
            if added and all(line.strip() in current for line in added):
                continue  # adopted since (kept by itself or in a combination)
            out.append(t)
        out.sort(key=lambda t: (-t.score, -t.seq))
        return out[:n]

    def total(self) -> int:
        return len(self.items)


def _close(gain: float | None, threshold: float | None) -> bool:
    return gain is not None and bool(threshold) and 0.5 * threshold < gain <= threshold


def format_near(t: Tried, full: bool = True) -> str:
    """A near-miss for the prompt: one line, and (full) its changed lines."""
    numbers = f", gain {t.gain:.4g} vs bar {t.threshold:.4g}" if t.gain is not None and t.threshold else ""
    head = f"- {t.experiment_id} [{t.detail}{numbers}]: {_clip(t.description or '(no description)', 200)}"
    if not full:
        return head
    removed, added = changed_lines(t.diff)
    lines = [f"-{x}" for x in removed] + [f"+{x}" for x in added]
    shown = [_clip(x, 160) for x in lines[:MAX_NEAR_LINES]]
    more = "\n    ..." if len(lines) > len(shown) else ""
    return head + ("\n    " + "\n    ".join(shown) + more if shown else "")


def pick_combination(near: list[Tried], asked: set[frozenset], most: int = 3) -> list[Tried]:
    """Two or three near-misses touching different names (the best scores first), a set not asked before;
    [] when there is none."""
    for start in range(len(near)):
        chosen = [near[start]]
        names = set(near[start].knobs)
        for t in near[start + 1:]:
            if len(chosen) >= most:
                break
            if names.isdisjoint(t.knobs):
                chosen.append(t)
                names.update(t.knobs)
        key = frozenset(t.experiment_id for t in chosen)
        if len(chosen) >= 2 and key not in asked:
            return chosen
        if len(chosen) > 2 and frozenset(t.experiment_id for t in chosen[:2]) not in asked:
            return chosen[:2]
    return []


COMBINE_TITLE = "== YOUR TURN: COMBINE NEAR MISSES =="


def combine_request(chosen: list[Tried]) -> str:
    """The task text asking for one edit that merges these near-misses into the current best."""
    ids = " + ".join(t.experiment_id for t in chosen)
    body = "\n".join(format_near(t, True) for t in chosen)
    return (f"{COMBINE_TITLE}\n\nEach of these changes looked better than the best of its time but was not proven "
            "alone; together their small gains may add up. Propose ONE experiment that applies all of them to the "
            "current best version (adapt each to the current code, keep its values):\n\n"
            f"{body}\n\nStart the DESCRIPTION with \"combine {ids}:\". Answer in the format given (DESCRIPTION line, "
            "then SEARCH/REPLACE blocks against the current files).")
