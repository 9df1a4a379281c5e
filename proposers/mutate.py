"""An LLM-free proposer: perturb the hyperparameters of the editable file.

It reads every top-level `UPPER_CASE = literal` assignment of the editable
Python files (numbers, booleans, and strings with a `# choices: a, b` comment)
and changes one or two of them: floats are scaled, integers stepped or
doubled/halved, booleans toggled, strings switched to another choice. The edit
replaces only the literal's characters, so formatting and comments survive and
the diff reads like a human's. Names that hold seeds or touch the evaluation
are never changed (changing them would game the metric, not improve it), nor
are lines marked `# fixed`. Told the trainers' hardware, it leaves alone the
knobs that do not apply there: `GPU_X` on CPU, and on GPU an `X` that has a
`GPU_X` twin (a run that changes only those would be a deterministic no-op).
"""

from __future__ import annotations

import ast
import random
import re
from dataclasses import dataclass

from ar_ray.types import Attempt, Baseline
from proposers.base import ProposalFailed, ProposerBase

PROTECTED = re.compile(r"SEED|EVAL|VAL_|BUDGET|TIME_LIMIT|DEVICE", re.IGNORECASE)
FLOAT_FACTORS = (0.5, 0.7, 0.85, 1.2, 1.4, 2.0)
CHOICES = re.compile(r"#.*?choices:\s*([^#]+)")


@dataclass(frozen=True)
class Knob:
    path: str
    name: str
    value: object
    line: int  # 1-based
    col: int
    end_col: int
    choices: tuple[str, ...] = ()


def find_knobs(path: str, source: str) -> list[Knob]:
    """Top-level `NAME = literal` assignments that may be mutated."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    lines = source.splitlines()
    knobs = []
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        name, value = node.targets[0].id, node.value
        sign = 1
        if isinstance(value, ast.UnaryOp) and isinstance(value.op, ast.USub) and isinstance(value.operand, ast.Constant):
            sign, value = -1, value.operand
        if not (name.isupper() and isinstance(value, ast.Constant)) or PROTECTED.search(name):
            continue
        if value.lineno != value.end_lineno:
            continue
        line = lines[node.lineno - 1]
        if re.search(r"#\s*fixed\b", line):
            continue
        v = value.value
        choices: tuple[str, ...] = ()
        if isinstance(v, str):
            m = CHOICES.search(line)
            if not m:
                continue
            choices = tuple(c.strip() for c in m.group(1).split(",") if c.strip())
            if len(set(choices) - {v}) == 0:
                continue
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            v = sign * v
        elif not isinstance(v, bool):
            continue
        col = node.value.col_offset  # includes the unary minus when there is one
        knobs.append(Knob(path, name, v, node.lineno, col, value.end_col_offset, choices))
    return knobs


def mutate_value(knob: Knob, rng: random.Random) -> object:
    v = knob.value
    if isinstance(v, bool):
        return not v
    if isinstance(v, str):
        others = [c for c in knob.choices if c != v]
        if not others:
            raise ValueError("no other choice")
        return rng.choice(others)
    if isinstance(v, int):
        if abs(v) >= 16:
            return v * 2 if rng.random() < 0.5 else int(v / 2)  # halved toward zero: the sign stays (-100 -> -50)
        step = rng.choice((-1, 1))
        new = v + step
        if v > 0 and new < 1:  # keep positive counts positive
            new = v + 1
        return new
    if v == 0.0:
        return rng.choice((0.01, 0.1))
    factor = rng.choice(FLOAT_FACTORS)
    if 0.5 <= v < 1.0:  # betas, momenta, fractions near 1: scale the distance to 1, so the value stays below it
        return float(f"{1 - (1 - v) * factor:.4g}")
    if 0.0 < v < 0.5:
        return float(f"{min(v * factor, 0.95):.4g}")
    return float(f"{v * factor:.4g}")


def applicable(knobs: list[Knob], hardware: str | None) -> list[Knob]:
    """The knobs that matter on this hardware: no GPU_X on CPU; on GPU, no X that a GPU_X twin replaces."""
    if hardware == "cpu":
        return [k for k in knobs if not k.name.startswith("GPU_")]
    if hardware == "gpu":
        twins = {k.name[4:] for k in knobs if k.name.startswith("GPU_")}
        return [k for k in knobs if k.name not in twins]
    return knobs


def render(value: object) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float):
        text = repr(value)
        return text if ("." in text or "e" in text or "inf" in text) else text + ".0"
    return repr(value)


class MutateProposer(ProposerBase):
    def __init__(self, name: str, editable: tuple[str, ...], program: str = "", seed: int = 0, max_changes: int = 2,
                 hardware: str | None = None):
        super().__init__(name, editable, program, seed)
        if hardware not in (None, "cpu", "gpu"):
            raise ValueError(f"hardware must be 'cpu' or 'gpu', got {hardware!r}")
        self.hardware = hardware
        self.rng = random.Random(f"{name}-{seed}")
        self.max_changes = max_changes
        self.tried: set[tuple[int, str]] = set()  # (base version, description): no repeats from one proposer

    def make_edit(self, base: Baseline, history: list[Attempt], in_flight: list[str], usage: dict):
        for _ in range(20):
            description, files = self._one_edit(base)
            if (base.version, description) not in self.tried:
                break
        self.tried.add((base.version, description))
        return description, files

    def _one_edit(self, base: Baseline):
        knobs = applicable([k for p in self.editable if p.endswith(".py") for k in find_knobs(p, base.files[p])],
                           self.hardware)
        if not knobs:
            raise ProposalFailed("proposer_error", "no mutable hyperparameters found: the mutate proposer needs "
                                 "top-level UPPER_CASE = literal assignments in the editable .py files")
        n = 1 if self.rng.random() < 0.7 or len(knobs) == 1 else min(self.max_changes, len(knobs))
        chosen = self.rng.sample(knobs, n)
        files = dict(base.files)
        changes = []
        # apply right-to-left within a line so column offsets stay valid
        for k in sorted(chosen, key=lambda k: (k.path, k.line, -k.col)):
            try:
                new = mutate_value(k, self.rng)
            except ValueError:
                continue
            lines = files[k.path].split("\n")
            line = lines[k.line - 1]
            lines[k.line - 1] = line[:k.col] + render(new) + line[k.end_col:]
            files[k.path] = "\n".join(lines)
            changes.append(f"{k.name} {render(k.value)} -> {render(new)}")
        if not changes:
            raise ProposalFailed("proposer_error", "no knob could be changed")
        return "; ".join(changes), {p: files[p] for p in self.editable if files[p] != base.files[p]}
