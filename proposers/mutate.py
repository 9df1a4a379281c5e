"""An LLM-free proposer: perturb the hyperparameters of the editable files.

What it tunes (`find_knobs`):

* Python files: every top-level `name = literal` assignment, whatever the case (`LR = 3e-4`,
  `learning_rate = 1e-3`, `n_layer = 2`); a lowercase name assigned again anywhere in the module
  (`iter_num += 1`) is state, not a setting, and is left alone; and the literal `default=` of every
  `parser.add_argument("--learning-rate", ..., default=5e-4)`, named by its dest (`learning_rate`);
* YAML (.yaml/.yml), JSON (.json) and TOML (.toml) config files: every scalar value, named by its
  dotted key path (`optim.lr`);

numbers and booleans always, strings only with a set to choose from (a `# choices: a, b` comment on the
line, or a declared knob). Each value moves by its type (`mutate_value`): floats on a log scale (values
in (0, 1) by their distance to 0 or 1), integers by one step below 16 and doubled or halved above (powers
of two from 8 up stay powers of two), booleans flipped, strings switched to another choice.

A target may declare its search space in ar-ray.toml's `[knobs]` table (validated by ar_ray.target):
`name = [lo, hi]` is a range, any other list (or `{ choices = [...] }`) the allowed values, and
`off = ["name", "wandb_*"]` names left alone. Declared knobs take precedence over detection: when any is
declared, only those are tuned. The edit replaces only the value's characters, so formatting and
comments survive and the diff reads like a human's. Names that hold seeds, budgets, paths, logging or
touch the evaluation are never changed by detection (changing them would game the metric or break the
run, not improve it), nor are lines marked `# fixed`. Told the trainers' hardware, it leaves alone the
knobs that do not apply there: `GPU_X` on CPU, and on GPU an `X` that has a `GPU_X` twin (a run that
changes only those would be a deterministic no-op).
"""

from __future__ import annotations

import ast
import fnmatch
import json
import math
import random
import re
import tomllib
from dataclasses import dataclass

from ar_ray.types import Attempt, Baseline
from proposers.base import ProposalFailed, ProposerBase

PROTECTED = re.compile(r"SEED|EVAL|VAL_|BUDGET|TIME_LIMIT|DEVICE", re.IGNORECASE)
# words (between underscores or dots) of names that are plumbing, not hyperparameters: where output goes, how
# often to log, which device, how long the run is (the budget's job)
PROTECTED_WORDS = {"LOG", "LOGGING", "WANDB", "TENSORBOARD", "SAVE", "CHECKPOINT", "CKPT", "RESUME", "COMPILE",
                   "DIR", "PATH", "FILE", "WORKERS", "PORT", "RANK", "VERBOSE", "DEBUG", "INTERVAL", "EPOCHS",
                   "DTYPE", "BACKEND", "DDP", "PRINT", "PROFILE"}
RUN_LENGTH = re.compile(r"(^|_)(MAX|NUM|TOTAL|TRAIN)_(ITERS|STEPS|ITERATIONS|EPOCHS)$", re.IGNORECASE)
FLOAT_FACTORS = (0.5, 0.7, 0.85, 1.2, 1.4, 2.0)
CHOICES = re.compile(r"#.*?choices:\s*([^#]+)")
FIXED = re.compile(r"#\s*fixed\b")
CONFIG_SUFFIXES = (".py", ".yaml", ".yml", ".json", ".toml")

LOOKS_FOR = ("mutate tunes top-level `name = literal` assignments (numbers, booleans, strings with a "
             "`# choices: a, b` comment) and argparse `add_argument(\"--name\", default=literal)` defaults in the "
             "editable .py files, and numbers and booleans in editable "
             ".yaml/.yml/.json/.toml config files; names holding seeds, evaluation, budgets, paths or logging "
             "are left alone")
HOW_TO_DECLARE = ("declare the search space under [knobs] in the target's ar-ray.toml, e.g. "
                  "learning_rate = [1e-4, 1e-2] (a range), n_layer = [2, 4, 6] (the values to try), "
                  "off = [\"eval_*\"] (names to leave alone), and list the file that holds them under editable")


@dataclass(frozen=True)
class Knob:
    path: str
    name: str
    value: object
    line: int  # 1-based
    col: int
    end_col: int
    choices: tuple = ()
    style: str = "py"  # how a new value is written: py, yaml, json, toml
    quote: str = ""  # a string's quote character as written ('' for a bare YAML string)
    lo: float | None = None  # a declared range
    hi: float | None = None


def protected(name: str) -> bool:
    """A name that detection never tunes: seeds, evaluation, budgets and run length, paths, logging, devices."""
    if PROTECTED.search(name):
        return True
    words = {w.upper() for w in re.split(r"[_.\-]", name) if w}
    leaf = re.split(r"[.]", name)[-1]
    return bool(words & PROTECTED_WORDS) or bool(RUN_LENGTH.search(leaf)) or leaf.upper() in {"EPOCHS", "ITERS"}


# ---- Python ----

def _reassigned(tree: ast.Module) -> set[str]:
    """Names stored more than once anywhere in the module (state like `iter_num += 1`, not a setting)."""
    count: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            count[node.id] = count.get(node.id, 0) + 1
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            for n in node.names:
                count[n] = count.get(n, 0) + 2
    return {n for n, c in count.items() if c > 1}


def _python_knobs(path: str, source: str) -> list[Knob]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    lines = source.splitlines()
    state = _reassigned(tree)
    knobs = []
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        name, value = node.targets[0].id, node.value
        if name.startswith("_") or (not name.isupper() and name in state):
            continue
        sign = 1
        if isinstance(value, ast.UnaryOp) and isinstance(value.op, ast.USub) and isinstance(value.operand, ast.Constant):
            sign, value = -1, value.operand
        if not isinstance(value, ast.Constant) or value.lineno != value.end_lineno:
            continue
        v = value.value
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = sign * v
        elif not isinstance(v, (bool, str)):
            continue
        line = lines[node.lineno - 1]
        quote = ""
        if isinstance(v, str):
            quote = source.splitlines()[value.lineno - 1][value.col_offset:value.col_offset + 1]
        col = node.value.col_offset  # includes the unary minus when there is one
        knobs.append(Knob(path, name, v, node.lineno, col, value.end_col_offset, _choices(line), "py", quote))
    return knobs + _argparse_knobs(path, tree, lines)


def _literal(node) -> tuple[bool, object]:
    """(True, value) for a one-line literal number, bool or string (a negative number too); else (False, None)."""
    sign = 1
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        sign, node = -1, node.operand
    if not isinstance(node, ast.Constant) or node.lineno != node.end_lineno:
        return False, None
    v = node.value
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return True, sign * v
    return isinstance(v, (bool, str)) and sign == 1, v


def _argparse_knobs(path: str, tree: ast.Module, lines: list[str]) -> list[Knob]:
    """`parser.add_argument("--lr", type=float, default=1e-3)` anywhere in the module: the default, named by the
    argument's dest (`--learning-rate` -> learning_rate); `choices=[...]` literals become its choices."""
    knobs = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"):
            continue
        flags = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        long = [f for f in flags if f.startswith("--")]
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        if not long or "default" not in kw:
            continue
        ok, v = _literal(kw["default"])
        if not ok:
            continue
        name = kw["dest"].value if isinstance(kw.get("dest"), ast.Constant) else long[0][2:].replace("-", "_")
        choices: tuple = ()
        if isinstance(kw.get("choices"), (ast.List, ast.Tuple)):
            choices = tuple(val for ok_, val in map(_literal, kw["choices"].elts) if ok_)
        d = kw["default"]
        quote = lines[d.lineno - 1][d.col_offset:d.col_offset + 1] if isinstance(v, str) else ""
        knobs.append(Knob(path, name, v, d.lineno, d.col_offset, d.end_col_offset,
                          choices or _choices(lines[d.lineno - 1]), "py", quote))
    return knobs


def _choices(line: str) -> tuple[str, ...]:
    m = CHOICES.search(line)
    return tuple(c.strip() for c in m.group(1).split(",") if c.strip()) if m else ()


def _fixed(line: str) -> bool:
    return bool(FIXED.search(line))


# ---- YAML and JSON ----

PLAIN_INT = re.compile(r"[-+]?\d[\d_]*$")
PLAIN_FLOAT = re.compile(r"[-+]?(\d[\d_]*\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _plain(text: str) -> object:
    """A bare scalar's value as a config reader would take it; None when it is not a number or a boolean."""
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if PLAIN_INT.match(text):
        return int(text.replace("_", ""))
    if PLAIN_FLOAT.match(text) and any(c.isdigit() for c in text):
        try:
            return float(text.replace("_", ""))
        except ValueError:
            return None
    return None


def _yaml_knobs(path: str, source: str, style: str) -> list[Knob]:
    try:
        import yaml
        root = yaml.compose(source, Loader=yaml.SafeLoader)
    except Exception:  # not parseable (or no PyYAML): nothing to tune here
        return []
    lines = source.splitlines()
    knobs: list[Knob] = []

    def walk(node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    walk(value, f"{prefix}.{key.value}" if prefix else str(key.value))
        elif isinstance(node, yaml.ScalarNode) and prefix:
            start, end = node.start_mark, node.end_mark
            if start.line != end.line:
                return
            line = lines[start.line]
            if node.style in ("'", '"'):
                v, quote = node.value, node.style
            elif node.style is None:
                v, quote = _plain(node.value), ""
                if v is None:
                    if style == "json" or not re.fullmatch(r"[A-Za-z][\w.\-]*", node.value):
                        return
                    v = node.value  # a bare word: a string, tunable only among declared choices
            else:
                return
            choices = _choices(line) if style == "yaml" else ()
            knobs.append(Knob(path, prefix, v, start.line + 1, start.column, end.column, choices, style, quote))

    walk(root, "")
    return knobs


# ---- TOML ----

TOML_TABLE = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
TOML_KEY = re.compile(r"""^\s*(?P<key>[A-Za-z0-9_\-."']+?)\s*=\s*(?P<value>"(?:[^"\\]|\\.)*"|'[^']*'|[^\s#]+)\s*(#.*)?$""")


def _toml_knobs(path: str, source: str) -> list[Knob]:
    try:
        tomllib.loads(source)
    except tomllib.TOMLDecodeError:
        return []
    knobs, table = [], ""
    for i, line in enumerate(source.splitlines()):
        if m := TOML_TABLE.match(line):
            # keys under an array of tables ([[x]]) have no single name: not tuned
            table = "\0" if m.group(1) == "[[" else m.group(2).replace('"', "").replace("'", "")
            continue
        m = TOML_KEY.match(line)
        if not m or table == "\0":
            continue
        text = m.group("value")
        if text[0] in "\"'":
            v, quote = text[1:-1], text[0]
            if quote == '"' and "\\" in v:
                continue
        else:
            v, quote = _plain(text), ""
            if v is None or text in ("True", "False", "TRUE", "FALSE"):
                continue
        key = m.group("key").replace('"', "").replace("'", "")
        knobs.append(Knob(path, f"{table}.{key}" if table else key, v, i + 1, m.start("value"), m.end("value"),
                          _choices(line), "toml", quote))
    return knobs


# ---- which knobs ----

def find_knobs(path: str, source: str) -> list[Knob]:
    """The values of one editable file that detection would tune (no declaration): by the file's type."""
    if path.endswith(".py"):
        found = _python_knobs(path, source)
    elif path.endswith((".yaml", ".yml")):
        found = _yaml_knobs(path, source, "yaml")
    elif path.endswith(".json"):
        found = _yaml_knobs(path, source, "json")
    elif path.endswith(".toml") and not path.endswith("ar-ray.toml"):
        found = _toml_knobs(path, source)
    else:
        return []
    return [k for k in found if _tunable(k, source)]


def _tunable(k: Knob, source: str) -> bool:
    line = source.splitlines()[k.line - 1]
    if _fixed(line) or protected(k.name):
        return False
    if isinstance(k.value, str):
        return len(set(k.choices) - {k.value}) > 0
    return True


def _all_values(path: str, source: str) -> list[Knob]:
    """Every value of a file a declaration may name (protected names included: the user chose them)."""
    if path.endswith(".py"):
        return _python_knobs(path, source)
    if path.endswith((".yaml", ".yml")):
        return _yaml_knobs(path, source, "yaml")
    if path.endswith(".json"):
        return _yaml_knobs(path, source, "json")
    if path.endswith(".toml"):
        return _toml_knobs(path, source)
    return []


def _matches(name: str, pattern: str) -> bool:
    """A declared name matches a knob's full dotted name or its last part; `*` and `?` are wildcards."""
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name.rsplit(".", 1)[-1], pattern)


class NoKnobs(ValueError):
    """Nothing to tune; the message says what mutate looks for and how to declare knobs."""


def knobs_for(files: dict[str, str], editable: tuple[str, ...], space: dict | None = None,
              off: tuple[str, ...] = ()) -> list[Knob]:
    """The knobs mutate tunes in these files: the declared space when there is one, else what detection finds
    (less the names `off`). Raises NoKnobs (with what to do) when there is none, or a declared one is missing."""
    space = space or {}
    if space:
        values = [k for p in editable for k in _all_values(p, files[p])]
        out, missing = [], []
        for name, spec in space.items():
            hits = [k for k in values if _matches(k.name, name) and not any(_matches(k.name, o) for o in off)
                    and not _fixed(files[k.path].splitlines()[k.line - 1])]
            if not hits:
                missing.append(name)
            for k in hits:
                kind, *rest = spec
                if kind == "range":
                    if not isinstance(k.value, (int, float)) or isinstance(k.value, bool):
                        raise NoKnobs(f"knob {name!r} is declared as a range [{rest[0]}, {rest[1]}] in ar-ray.toml, "
                                      f"but {k.path} line {k.line} holds {k.value!r}, not a number; declare its "
                                      f"choices instead, e.g. {name} = [...]")
                    out.append(Knob(**{**k.__dict__, "lo": rest[0], "hi": rest[1]}))
                else:
                    out.append(Knob(**{**k.__dict__, "choices": tuple(rest[0])}))
        if missing:
            where = ", ".join(editable)
            raise NoKnobs(f"knob(s) {', '.join(repr(m) for m in missing)} declared under [knobs] in ar-ray.toml are "
                          f"not a top-level literal value (or a config key) in the editable file(s) {where}; fix "
                          "the name (YAML/JSON/TOML keys may be dotted, e.g. optim.lr), or list the file that holds "
                          "it under editable")
        return out
    found = [k for p in editable for k in find_knobs(p, files[p]) if not any(_matches(k.name, o) for o in off)]
    if not found:
        raise NoKnobs(f"no mutable hyperparameters found in the editable file(s) {', '.join(editable)}: "
                      f"{LOOKS_FOR}. Make the settings such literals, or {HOW_TO_DECLARE}")
    return found


# ---- new values ----

def _is_pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def mutate_value(knob: Knob, rng: random.Random) -> object:
    v = knob.value
    if knob.choices:
        others = [c for c in knob.choices if c != v]
        if not others:
            raise ValueError("no other choice")
        return rng.choice(others)
    if isinstance(v, bool):
        return not v
    if isinstance(v, str):
        raise ValueError("a string without choices")
    if knob.lo is not None:
        return _in_range(knob, rng)
    if isinstance(v, int):
        if _is_pow2(v) and v >= 8 or abs(v) >= 16:
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


def _in_range(knob: Knob, rng: random.Random) -> object:
    """A new value within a declared range [lo, hi]: a step as above, clamped; outside it or stuck at an end, a
    fresh draw from the range (log-uniform when it is positive)."""
    lo, hi, v = knob.lo, knob.hi, knob.value
    is_int = isinstance(v, int)
    if is_int:
        lo, hi = math.ceil(lo), math.floor(hi)
    for _ in range(8):
        new = mutate_value(Knob(**{**knob.__dict__, "lo": None, "hi": None}), rng) if lo <= v <= hi else None
        if new is None or not lo <= new <= hi:
            if is_int:
                new = rng.randint(int(lo), int(hi))
            elif lo > 0:
                new = float(f"{math.exp(rng.uniform(math.log(lo), math.log(hi))):.4g}")
            else:
                new = float(f"{rng.uniform(lo, hi):.4g}")
            new = min(max(new, lo), hi)
        if is_int:
            new = int(round(new))
        if new != v:
            return new
    raise ValueError("no other value in the range")


def applicable(knobs: list[Knob], hardware: str | None) -> list[Knob]:
    """The knobs that matter on this hardware: no GPU_X on CPU; on GPU, no X that a GPU_X twin replaces."""
    if hardware == "cpu":
        return [k for k in knobs if not k.name.startswith("GPU_")]
    if hardware == "gpu":
        twins = {k.name[4:] for k in knobs if k.name.startswith("GPU_")}
        return [k for k in knobs if k.name not in twins]
    return knobs


def render(value: object, style: str = "py", quote: str = "") -> str:
    if isinstance(value, bool):
        return repr(value) if style == "py" else ("true" if value else "false")
    if isinstance(value, str):
        if style == "py":
            return repr(value) if quote != '"' else json.dumps(value)
        if quote == "'":
            return "'" + value.replace("'", "''") + "'" if style == "yaml" else "'" + value + "'"
        if quote == '"' or style in ("json", "toml"):
            return json.dumps(value)
        return value
    if isinstance(value, float):
        text = repr(value)
        if style == "yaml" and "e" in text and "." not in text.split("e")[0]:
            mantissa, exp = text.split("e")
            text = f"{mantissa}.0e{exp}"  # PyYAML reads 1e-05 as a string; 1.0e-05 is a float in every reader
        return text if ("." in text or "e" in text or "inf" in text) else text + ".0"
    return repr(value)


def _still_parses(path: str, text: str) -> bool:
    try:
        if path.endswith(".py"):
            ast.parse(text)
        elif path.endswith(".json"):
            json.loads(text)
        elif path.endswith(".toml"):
            tomllib.loads(text)
        elif path.endswith((".yaml", ".yml")):
            import yaml
            yaml.safe_load(text)
    except Exception:
        return False
    return True


class MutateProposer(ProposerBase):
    def __init__(self, name: str, editable: tuple[str, ...], program: str = "", seed: int = 0, max_changes: int = 2,
                 hardware: str | None = None, space: dict | None = None, off: tuple[str, ...] = ()):
        super().__init__(name, editable, program, seed)
        if hardware not in (None, "cpu", "gpu"):
            raise ValueError(f"hardware must be 'cpu' or 'gpu', got {hardware!r}")
        self.hardware = hardware
        self.space, self.off = dict(space or {}), tuple(off)
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

    def knobs(self, files: dict[str, str]) -> list[Knob]:
        """What this proposer would tune in these files (NoKnobs says why none)."""
        knobs = applicable(knobs_for(files, self.editable, self.space, self.off), self.hardware)
        if not knobs:
            raise NoKnobs(f"every knob found applies only to the other hardware (GPU_X knobs on CPU trainers): "
                          f"{HOW_TO_DECLARE}")
        return knobs

    def _one_edit(self, base: Baseline):
        try:
            knobs = self.knobs(base.files)
        except NoKnobs as e:
            raise ProposalFailed("proposer_error", str(e)) from None
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
            lines[k.line - 1] = line[:k.col] + render(new, k.style, k.quote) + line[k.end_col:]
            text = "\n".join(lines)
            if not _still_parses(k.path, text):
                continue
            files[k.path] = text
            changes.append(f"{k.name} {render(k.value, k.style)} -> {render(new, k.style)}")
        if not changes:
            raise ProposalFailed("proposer_error", "no knob could be changed")
        return "; ".join(changes), {p: files[p] for p in self.editable if files[p] != base.files[p]}
