"""What a research target is, and how a candidate becomes a runnable folder.

A target is a folder: editable files (what proposers change), read-only files
(copied into every run and verified unchanged afterwards), a run command, a
metric pattern and direction, and budgets. It is declared in `ar-ray.toml`
inside the folder; a folder without one is read as the upstream autoresearch
layout (train.py editable, prepare.py read-only, `val_bpb:` minimized).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import math
import os
import re
import shlex
import string
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ar_ray.metric_names import direction_of
from ar_ray.search.pruning import compile_pattern
from ar_ray.timeouts import Timeouts

CONFIG_NAME = "ar-ray.toml"
DEFAULT_PATTERN = r"^val_bpb:\s*(\S+)"
# Never copied into a run dir: caches, VCS data, our own run dirs, notebooks' checkpoints.
IGNORE = (".git", "__pycache__", "*.pyc", ".venv", "runs", ".ipynb_checkpoints", "*.egg-info", ".pytest_cache")
MAX_READONLY_BYTES = 64 * 2**20  # read-only files are copied per run: data belongs in a cache, not here
# What `command` and `setup` may use: the trainer fills each of them for every run (trainers/trainer.py).
PLACEHOLDERS = ("python", "seed", "budget_seconds", "budget_tokens", "result_file", "run_dir")


class TargetError(ValueError):
    """A target that cannot run; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Target:
    root: Path
    name: str
    editable: tuple[str, ...]
    readonly: tuple[str, ...]
    command: str
    metric: str = "val_bpb"
    metric_pattern: str = DEFAULT_PATTERN
    direction: str = "min"
    progress_pattern: str | None = None  # a log line's progress and training loss: the curve (--prune, ar_ray/search/pruning.py)
    budget_seconds: float | None = 300.0
    cpu_budget_seconds: float | None = None  # the budget on trainers without a GPU (None: budget_seconds)
    budget_tokens: int | None = None
    timeout_seconds: float | None = None  # None: learned or 2 x budget + 60 s (ar_ray/timeouts.py)
    setup: str | None = None  # run once per node before the first experiment
    program: str | None = None  # research instructions for LLM proposers
    result_file: bool = False  # the harness writes the metric to $AR_RESULT_FILE as JSON
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the child
    # names of variables copied from the trainer's environment to the child, beyond the allowlist (trainers/trainer.py)
    env_passthrough: tuple[str, ...] = ()
    # data the runs read and must never change (paths on each node; ~ and $VARS expanded there): fingerprinted
    # before and after every run, read-only inside the sandbox
    data: tuple[str, ...] = ()
    network: bool = False  # may a sandboxed run open network connections?
    # modules of the harness a trainer may import in the next run's child while the current run trains
    # (trainers/prestart.py); () runs every child cold
    prestart: tuple[str, ...] = ()
    # a trusted evaluation step (trainers/evaluate.py): started beside each run in a sandbox of its own, it scores
    # what the run left and prints the metric; the run's own output then never decides. `heldout`: paths hidden
    # from the training run (the validation split), readable to the evaluation
    evaluate: str | None = None
    heldout: tuple[str, ...] = ()
    readonly_hashes: dict[str, str] = field(default_factory=dict)
    # the search space declared under [knobs]: name -> ("range", lo, hi) or ("choices", (values...)); and the
    # names (or * patterns) the mutate proposer must leave alone (`off`). Read by proposers/mutate.py.
    knobs: dict[str, tuple] = field(default_factory=dict)
    knobs_off: tuple[str, ...] = ()
    # the content of every editable and read-only file, read once by the driver: trainers on other nodes
    # materialize runs from it and never need the target folder itself
    contents: dict[str, bytes] = field(default_factory=dict, repr=False)

    def budget_for(self, gpus: int) -> float | None:
        """The wall-clock budget of a run on a trainer with this many GPUs."""
        return self.cpu_budget_seconds if gpus == 0 and self.cpu_budget_seconds else self.budget_seconds

    @property
    def hard_timeout(self) -> float:
        """The timeout of a run with the target's own budget (`ar_ray.timeouts` has the rule)."""
        return Timeouts(self.timeout_seconds, self.budget_tokens).for_run(self.budget_seconds, {})

    def better(self, a: float, b: float | None) -> bool:
        """Is metric `a` strictly better than `b` (None counts as worst)?"""
        if b is None:
            return True
        return a < b if self.direction == "min" else a > b

    def read_editable(self) -> dict[str, str]:
        return {p: self.contents[p].decode() for p in self.editable}

    def program_text(self) -> str:
        return (self.root / self.program).read_text() if self.program else ""


def _ignored(rel: str) -> bool:
    return any(fnmatch.fnmatch(part, pat) for part in Path(rel).parts for pat in IGNORE)


def _list_files(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = [d for d in dirnames if not _ignored(os.path.join(rel_dir, d))]
        for f in filenames:
            rel = os.path.normpath(os.path.join(rel_dir, f))
            if not _ignored(rel):
                out.append(rel)
    return sorted(out)


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _is_str(v) -> bool:
    return isinstance(v, str)


def _is_bool(v) -> bool:
    return isinstance(v, bool)


def _is_number(v) -> bool:  # TOML integers are fine; booleans (a subclass of int), nan and inf are not
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _is_count(v) -> bool:
    return _is_number(v) and isinstance(v, int)


def _is_names(v) -> bool:  # one name, or a list of them
    return isinstance(v, str) or isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)


def _is_env(v) -> bool:  # numbers are written out as strings; nested tables, lists and booleans are refused
    return isinstance(v, dict) and all(isinstance(k, str) and k and "=" not in k and not isinstance(x, bool)
                                       and isinstance(x, (str, int, float)) for k, x in v.items())


def _is_modules(v) -> bool:
    return isinstance(v, (list, tuple)) and all(isinstance(x, str) and re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", x)
                                                for x in v)


def _is_env_names(v) -> bool:  # NAME, never NAME=value: the value is the trainer's own
    return isinstance(v, (list, tuple)) and all(isinstance(x, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", x)
                                                for x in v)


# Every key of [target]: how its value is checked, what it must be, and an example to write instead.
FIELDS = {
    "name": (_is_str, "a string", 'name = "gpt"'),
    "editable": (_is_names, "a list of file names", 'editable = ["train.py"]'),
    "readonly": (_is_names, "a list of file names", 'readonly = ["prepare.py"]'),
    "command": (_is_str, "a command line", 'command = "{python} train.py"'),
    "setup": (_is_str, "a command line", 'setup = "{python} prepare.py"'),
    "program": (_is_str, "a file name", 'program = "program.md"'),
    "metric": (_is_str, "a string", 'metric = "val_bpb"'),
    "metric_pattern": (_is_str, "a regular expression", "metric_pattern = '^val_bpb:\\s*(\\S+)'"),
    "direction": (_is_str, "'min' or 'max'", 'direction = "min"'),
    "progress_pattern": (_is_str, "a regular expression with groups loss and progress (or percent)",
                         "progress_pattern = 'loss (?P<loss>\\S+) .* (?P<percent>[\\d.]+)% done'"),
    "budget_seconds": (_is_number, "a positive number of seconds", "budget_seconds = 300"),
    "cpu_budget_seconds": (_is_number, "a positive number of seconds", "cpu_budget_seconds = 20"),
    "timeout_seconds": (_is_number, "a positive number of seconds", "timeout_seconds = 660"),
    "budget_tokens": (_is_count, "a positive whole number of tokens", "budget_tokens = 50_000_000"),
    "result_file": (_is_bool, "true or false", "result_file = true"),
    "network": (_is_bool, "true or false", "network = false"),
    "env": (_is_env, "a table of NAME = value strings", 'env = { OMP_NUM_THREADS = "4" }'),
    "env_passthrough": (_is_env_names, "a list of environment variable names (the values come from the trainer's "
                        "environment)", 'env_passthrough = ["WANDB_MODE"]'),
    "data": (_is_names, "a list of paths", 'data = ["~/.cache/my-data"]'),
    "prestart": (_is_modules, "a list of module names (the harness's, never an editable file's)",
                 'prestart = ["torch", "prepare"]'),
    "evaluate": (_is_str, "a command line", 'evaluate = "{python} prepare.py evaluate {run_dir}"'),
    "heldout": (_is_names, "a list of paths", 'heldout = ["~/.cache/my-data/val"]'),
}


def _read_declaration(config_path: Path) -> dict:
    """The [target] table of ar-ray.toml ({} without the file), its keys known."""
    if not config_path.exists():
        return {}
    try:
        doc = tomllib.loads(config_path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise TargetError(f"{config_path} is not valid TOML: {e}") from None
    stray = sorted(set(doc) - {"target", "knobs"})
    if stray:
        raise TargetError(f"{config_path}: unknown table(s) or key(s) {stray} at the top level; "
                          "ar-ray reads only the tables [target] and [knobs]: write the settings under a line [target]")
    decl = doc.get("target", {})
    if not isinstance(decl, dict):
        raise TargetError(f"{config_path}: target must be the table [target], got target = {decl!r}")
    if "knobs" in decl:
        raise TargetError(f"{config_path}: knobs is a table of its own: write [knobs] on a line of its own, "
                          "not knobs under [target]")
    unknown = set(decl) - set(FIELDS)
    if unknown:
        raise TargetError(f"{config_path}: unknown key(s) {sorted(unknown)} under [target]; known keys: {sorted(FIELDS)}")
    return {**decl, "knobs": doc["knobs"]} if "knobs" in doc else decl


KNOBS_EXAMPLE = ('[knobs] learning_rate = [1e-4, 1e-2] (a range [lo, hi]), n_layer = [2, 4, 6] (the values to try), '
                 'act = ["relu", "gelu"], n_head = { choices = [4, 8] } (two numbers as choices, not a range), '
                 'off = ["eval_*", "wandb_log"] (names mutate leaves alone)')


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_knobs(table) -> tuple[dict[str, tuple], tuple[str, ...]]:
    """The [knobs] table as (space, off): name -> ("range", lo, hi) or ("choices", values); names left alone.

    `name = [lo, hi]` (two numbers) is a range, any other list the values to try; `name = { choices = [...] }`
    makes two numbers choices, `name = { range = [lo, hi] }` says range outright; `off` lists names (or
    * patterns) that mutate must never change."""
    hint = f"write e.g. {KNOBS_EXAMPLE}"
    if not isinstance(table, dict):
        raise TargetError(f"knobs must be the table [knobs], got knobs = {table!r}; {hint}")
    space: dict[str, tuple] = {}
    off = table.get("off", [])
    if isinstance(off, str):
        off = [off]
    if not (isinstance(off, list) and all(isinstance(x, str) and x for x in off)):
        raise TargetError(f"[knobs] off must be a list of names (or * patterns) mutate leaves alone, got {off!r}; "
                          'write e.g. off = ["eval_*", "wandb_log"]')
    for name, spec in table.items():
        if name == "off":
            continue
        where = f"[knobs] {name}"
        if isinstance(spec, dict):
            if set(spec) == {"choices"} and isinstance(spec["choices"], list):
                values = spec["choices"]
            elif set(spec) == {"range"} and isinstance(spec["range"], list):
                values = spec["range"]
                if len(values) != 2 or not all(_number(x) for x in values):
                    raise TargetError(f"{where}: a range is two numbers [lo, hi], got {values!r}; "
                                      f"write e.g. {name} = {{ range = [0.0001, 0.01] }}")
            else:
                raise TargetError(f"{where}: a table must be {{ choices = [...] }} or {{ range = [lo, hi] }}, got "
                                  f"{spec!r}; {hint}")
            kind = next(iter(spec))
        elif isinstance(spec, list):
            values = spec
            kind = "range" if len(spec) == 2 and all(_number(x) for x in spec) else "choices"
        else:
            raise TargetError(f"{where} must be a range [lo, hi] or a list of the values to try, got {spec!r}; {hint}")
        if kind == "range":
            lo, hi = values
            if not lo < hi:
                raise TargetError(f"{where}: the range [{lo}, {hi}] is empty; write the smaller bound first, "
                                  f"e.g. {name} = [{min(lo, hi)}, {max(lo, hi) if lo != hi else hi * 2 or 1}]")
            space[name] = ("range", lo, hi)
            continue
        if len(values) < 2:
            raise TargetError(f"{where} lists {len(values)} value(s); give at least two to choose between, "
                              f"or a range [lo, hi]")
        if not all(isinstance(x, (str, bool)) or _number(x) for x in values):
            raise TargetError(f"{where}: choices must be strings, numbers or booleans, got {values!r}")
        if len({type(x) if not isinstance(x, int) or isinstance(x, bool) else float for x in values}) > 1:
            raise TargetError(f"{where}: choices mix types ({values!r}); list values of one type")
        if len(set(values)) != len(values):
            raise TargetError(f"{where} lists a value twice ({values!r}); list each value once")
        space[name] = ("choices", tuple(values))
    return space, tuple(off)


def check_command(key: str, command: str) -> None:
    """A `command` or `setup` that format_command can fill: balanced quotes, only known {placeholders}."""
    hint = f"the placeholders are {', '.join(f'{{{p}}}' for p in PLACEHOLDERS)}; write {{{{ and }}}} for a literal brace"
    try:
        parts = shlex.split(command)
    except ValueError as e:
        raise TargetError(f"{key} {command!r} cannot be split into arguments ({e}); close the quote or escape it with \\") from None
    if not parts:
        raise TargetError(f"{key} is empty; set '{key}' in {CONFIG_NAME}, e.g. {FIELDS[key][2]}")
    for part in parts:
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(part) if name is not None]
        except ValueError as e:
            raise TargetError(f"{key} {command!r} has a stray brace ({e}); {hint}") from None
        for name in names:
            if name not in PLACEHOLDERS:
                raise TargetError(f"{key} {command!r} uses unknown placeholder {{{name}}}; {hint}")


def pattern_for_new_metric(declared: dict, metric: str) -> str | None:
    """The metric_pattern when the metric's name is overridden (--metric) and the pattern is not (None: the default
    pattern for the new name). A declared pattern that names the declared metric reads the new name's lines the
    same way (its name swapped); one that does not name it is refused: nothing tells whether it reads the new name."""
    old, pattern = declared.get("metric", "val_bpb"), declared.get("metric_pattern")
    if not isinstance(pattern, str) or not pattern or metric == old or not isinstance(old, str):
        return pattern
    for spelled in dict.fromkeys((re.escape(old), old)):
        if spelled in pattern:
            return pattern.replace(spelled, re.escape(metric))
    raise TargetError(f"the metric is set to {metric!r} (--metric), but the target's metric_pattern '{pattern}' in "
                      f"{CONFIG_NAME} is for its metric {old!r} and does not name it, so it cannot be adapted to "
                      f"{metric!r}; pass --metric-pattern too, a regex with one group around the number on "
                      f"{metric}'s line, e.g. --metric-pattern '^{metric}:\\s*(\\S+)'")


def check_new_metric_direction(metric: str, old: str, direction: str) -> None:
    """--metric NAME without --direction keeps the target's direction; refused when NAME's words clearly say the
    other way (val_auc on a target minimizing val_rmse would be optimized the wrong way). Unsure names pass."""
    said = direction_of(metric)
    if metric == old or said is None or said == direction:
        return
    way = {"min": "minimized (lower is better)", "max": "maximized (higher is better)"}
    raise TargetError(f"the metric is set to {metric!r} (--metric), which reads like a metric to be {way[said]}, but "
                      f"the target's metric {old!r} is {way[direction]} and that direction would be kept; pass "
                      f"--direction {said} (or --direction {direction} if {metric} is indeed "
                      f"{way[direction].split(' ')[0]}), or set direction in {CONFIG_NAME}")


def load_target(path: str | os.PathLike, **overrides) -> Target:
    """Read a target folder; `overrides` (from CLI flags) win over the TOML file. None values are ignored."""
    root = Path(path).resolve()
    if not root.is_dir():
        raise TargetError(f"target folder {root} does not exist; pass --target with a folder holding train.py (or ar-ray.toml)")
    declared = _read_declaration(root / CONFIG_NAME)
    decl = {**declared, **{k: v for k, v in overrides.items() if v is not None}}
    if overrides.get("metric") is not None and overrides.get("metric_pattern") is None and "metric_pattern" in declared:
        decl["metric_pattern"] = pattern_for_new_metric(declared, overrides["metric"])
    if "knobs" in decl:
        decl["knobs"], decl["knobs_off"] = parse_knobs(decl["knobs"])
    for key, value in decl.items():
        if key in ("knobs", "knobs_off"):
            continue
        check, what, example = FIELDS[key]
        if not check(value):
            raise TargetError(f"{key} must be {what}, got {value!r}; write e.g. {example}")
    for key in ("editable", "readonly", "data", "env_passthrough", "heldout", "prestart"):
        if key in decl:
            decl[key] = (decl[key],) if isinstance(decl[key], str) else tuple(decl[key])
    if "env" in decl:
        decl["env"] = {k: str(v) for k, v in decl["env"].items()}

    editable = decl.pop("editable", ("train.py",))
    if not editable:
        raise TargetError(f"editable is empty; list the file(s) proposers may change, e.g. {FIELDS['editable'][2]}")
    for rel in editable:
        if not (root / rel).is_file():
            if not (root / CONFIG_NAME).exists():  # not a target yet: nothing says which file is the editable one
                raise TargetError(f"target folder {root} has no {CONFIG_NAME} and no {rel} (the default editable file); "
                                  f"run `ar-ray init {shlex.quote(str(path))}` to write an {CONFIG_NAME} for it from its "
                                  f"files, edit what it could not detect, then `ar-ray check` it")
            raise TargetError(f"editable file {rel!r} is missing from target folder {root}; create it or list the right file under 'editable' in {CONFIG_NAME}")
    all_files = [f for f in _list_files(root) if f not in editable]
    readonly = decl.pop("readonly", tuple(all_files))
    for rel in readonly:
        if not (root / rel).is_file():
            raise TargetError(f"read-only file {rel!r} listed in {CONFIG_NAME} is missing from {root}")
        if rel in editable:
            raise TargetError(f"{rel!r} is listed both as editable and read-only; pick one")
    size = sum((root / r).stat().st_size for r in readonly)
    if size > MAX_READONLY_BYTES:
        raise TargetError(f"read-only files in {root} total {size / 2**20:.0f} MiB; they are copied into every run. "
                          "Keep data in a cache outside the target folder (prepare.py can build it) or list fewer files under 'readonly'.")

    direction = decl.pop("direction", "min")
    if direction not in ("min", "max"):
        raise TargetError(f"direction must be 'min' or 'max', got {direction!r}")
    if overrides.get("metric") is not None and overrides.get("direction") is None:
        check_new_metric_direction(overrides["metric"], declared.get("metric", "val_bpb"), direction)
    pattern = decl.pop("metric_pattern", None) or DEFAULT_PATTERN.replace("val_bpb", re.escape(decl.get("metric", "val_bpb")))
    try:
        compiled = re.compile(pattern, re.MULTILINE)
    except re.error as e:
        raise TargetError(f"metric_pattern {pattern!r} is not a valid regular expression: {e}") from None
    if compiled.groups < 1:
        raise TargetError(f"metric_pattern {pattern!r} needs one capture group around the number, e.g. '^val_bpb:\\s*(\\S+)'")
    if decl.get("progress_pattern"):
        try:
            compile_pattern(decl["progress_pattern"])
        except ValueError as e:
            raise TargetError(str(e)) from None
    command = decl.pop("command", "{python} " + shlex.quote(editable[0]))
    check_command("command", command)
    if decl.get("setup"):
        check_command("setup", decl["setup"])
    if decl.get("evaluate"):
        check_command("evaluate", decl["evaluate"])
        if decl.get("result_file"):
            raise TargetError("evaluate and result_file = true exclude each other: the metric comes from the trusted "
                              "evaluation's output; drop result_file from the target's ar-ray.toml")
    if decl.get("heldout") and not decl.get("evaluate"):
        raise TargetError("heldout hides data from the runs for a trusted evaluation to read, but the target declares "
                          "no evaluate command; add one, e.g. " + FIELDS["evaluate"][2])
    if decl.get("prestart") and (problem := prestart_problem(command, decl["prestart"], editable)):
        raise TargetError(f"{root / CONFIG_NAME}: {problem}")
    program = decl.pop("program", "program.md" if (root / "program.md").is_file() else None)
    if program and not (root / program).is_file():
        raise TargetError(f"program file {program!r} is missing from {root}")

    target = Target(root=root, name=decl.pop("name", root.name), editable=editable, readonly=readonly,
                     command=command, metric_pattern=pattern, direction=direction, program=program, **decl)
    contents = {rel: (root / rel).read_bytes() for rel in editable + readonly}
    hashes = {rel: hashlib.sha256(contents[rel]).hexdigest() for rel in readonly}
    return dataclasses.replace(target, readonly_hashes=hashes, contents=contents)


def prestart_problem(command: str, modules: tuple[str, ...], editable: tuple[str, ...]) -> str | None:
    """Why `prestart` cannot work with this command and these editable files, or None."""
    parts = shlex.split(command)
    if len(parts) < 2 or parts[0] != "{python}" or (parts[1] == "-m" and len(parts) < 3) \
            or (parts[1] != "-m" and not parts[1].endswith(".py")):
        return (f"prestart needs command = \"{{python}} SCRIPT.py ...\" or \"{{python}} -m MODULE ...\" (the "
                f"pre-started interpreter runs it in-process), got {command!r}; remove prestart or change the command")
    own = {Path(rel).with_suffix("").as_posix().replace("/", ".") for rel in editable if rel.endswith(".py")}
    own |= {Path(rel).parts[0] for rel in editable if len(Path(rel).parts) > 1}
    for name in modules:
        if any(name == m or name.startswith(m + ".") for m in own):
            return (f"prestart lists {name!r}, an editable file: the next run's child imports it before the "
                    "candidate is known, so only the harness may be listed (read-only files, installed packages); "
                    "remove it from prestart")
    return None


def format_command(command: str, **values) -> list[str]:
    """Split a command template into argv, filling the PLACEHOLDERS ({python} defaults to this interpreter)."""
    check_command("command", command)
    values.setdefault("python", sys.executable)
    return [part.format(**values) for part in shlex.split(command)]


def materialize(target: Target, files: dict[str, str], run_dir: Path) -> None:
    """Write a candidate's run folder: the read-only files copied, the editable files as given."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for rel in target.readonly:
        dst = run_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(target.contents[rel])
    for rel in target.editable:
        dst = run_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(files[rel])


def tampered_files(target: Target, run_dir: Path) -> list[str]:
    """Read-only files that a run changed or removed (hash check after the run)."""
    bad = []
    for rel, digest in target.readonly_hashes.items():
        path = run_dir / rel
        if not path.is_file() or file_hash(path) != digest:
            bad.append(rel)
    return bad
