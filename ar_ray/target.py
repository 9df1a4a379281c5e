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
import os
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ar_ray.timeouts import Timeouts

CONFIG_NAME = "ar-ray.toml"
DEFAULT_PATTERN = r"^val_bpb:\s*(\S+)"
# Never copied into a run dir: caches, VCS data, our own run dirs, notebooks' checkpoints.
IGNORE = (".git", "__pycache__", "*.pyc", ".venv", "runs", ".ipynb_checkpoints", "*.egg-info", ".pytest_cache")
MAX_READONLY_BYTES = 64 * 2**20  # read-only files are copied per run: data belongs in a cache, not here


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
    budget_seconds: float | None = 300.0
    cpu_budget_seconds: float | None = None  # the budget on trainers without a GPU (None: budget_seconds)
    budget_tokens: int | None = None
    timeout_seconds: float | None = None  # None: learned or 2 x budget + 60 s (ar_ray/timeouts.py)
    setup: str | None = None  # run once per node before the first experiment
    program: str | None = None  # research instructions for LLM proposers
    result_file: bool = False  # the harness writes the metric to $AR_RESULT_FILE as JSON
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the child
    # data the runs read and must never change (paths on each node; ~ and $VARS expanded there): fingerprinted
    # before and after every run, read-only inside the sandbox
    data: tuple[str, ...] = ()
    network: bool = False  # may a sandboxed run open network connections?
    readonly_hashes: dict[str, str] = field(default_factory=dict)
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


def _as_tuple(value, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TargetError(f"'{key}' must be a list of file names, got {value!r}")
    return tuple(value)


def load_target(path: str | os.PathLike, **overrides) -> Target:
    """Read a target folder; `overrides` (from CLI flags) win over the TOML file. None values are ignored."""
    root = Path(path).resolve()
    if not root.is_dir():
        raise TargetError(f"target folder {root} does not exist; pass --target with a folder holding train.py (or ar-ray.toml)")
    config_path = root / CONFIG_NAME
    decl: dict = {}
    if config_path.exists():
        try:
            decl = tomllib.loads(config_path.read_text()).get("target", {})
        except tomllib.TOMLDecodeError as e:
            raise TargetError(f"{config_path} is not valid TOML: {e}") from None
    known = {f.name for f in dataclasses.fields(Target)} - {"root", "readonly_hashes", "contents"}
    unknown = set(decl) - known
    if unknown:
        raise TargetError(f"{config_path}: unknown key(s) {sorted(unknown)} under [target]; known keys: {sorted(known)}")
    decl.update({k: v for k, v in overrides.items() if v is not None})

    editable = _as_tuple(decl.pop("editable", ["train.py"]), "editable")
    for rel in editable:
        if not (root / rel).is_file():
            raise TargetError(f"editable file {rel!r} is missing from target folder {root}; create it or list the right file under 'editable' in {CONFIG_NAME}")
    all_files = [f for f in _list_files(root) if f not in editable]
    readonly = _as_tuple(decl.pop("readonly"), "readonly") if "readonly" in decl else tuple(all_files)
    for rel in readonly:
        if not (root / rel).is_file():
            raise TargetError(f"read-only file {rel!r} listed in {CONFIG_NAME} is missing from {root}")
        if rel in editable:
            raise TargetError(f"{rel!r} is listed both as editable and read-only; pick one")
    size = sum((root / r).stat().st_size for r in readonly)
    if size > MAX_READONLY_BYTES:
        raise TargetError(f"read-only files in {root} total {size / 2**20:.0f} MiB; they are copied into every run. "
                          "Keep data in a cache outside the target folder (prepare.py can build it) or list fewer files under 'readonly'.")

    if "data" in decl:
        decl["data"] = _as_tuple(decl["data"], "data")
    if not isinstance(decl.get("network", False), bool):
        raise TargetError(f"network must be true or false, got {decl['network']!r}")
    direction = decl.pop("direction", "min")
    if direction not in ("min", "max"):
        raise TargetError(f"direction must be 'min' or 'max', got {direction!r}")
    pattern = decl.pop("metric_pattern", None) or DEFAULT_PATTERN.replace("val_bpb", re.escape(decl.get("metric", "val_bpb")))
    try:
        compiled = re.compile(pattern, re.MULTILINE)
    except re.error as e:
        raise TargetError(f"metric_pattern {pattern!r} is not a valid regular expression: {e}") from None
    if compiled.groups < 1:
        raise TargetError(f"metric_pattern {pattern!r} needs one capture group around the number, e.g. '^val_bpb:\\s*(\\S+)'")
    for key in ("budget_seconds", "cpu_budget_seconds", "timeout_seconds"):
        if decl.get(key) is not None and float(decl[key]) <= 0:
            raise TargetError(f"{key} must be positive, got {decl[key]}")
    if decl.get("budget_tokens") is not None and int(decl["budget_tokens"]) <= 0:
        raise TargetError(f"budget_tokens must be positive, got {decl['budget_tokens']}")
    command = decl.pop("command", "{python} " + editable[0])
    if not command.strip():
        raise TargetError("command is empty; set 'command' in ar-ray.toml, e.g. \"{python} train.py\"")
    program = decl.pop("program", "program.md" if (root / "program.md").is_file() else None)
    if program and not (root / program).is_file():
        raise TargetError(f"program file {program!r} is missing from {root}")

    target = Target(root=root, name=decl.pop("name", root.name), editable=editable, readonly=readonly,
                     command=command, metric_pattern=pattern, direction=direction, program=program, **decl)
    contents = {rel: (root / rel).read_bytes() for rel in editable + readonly}
    hashes = {rel: hashlib.sha256(contents[rel]).hexdigest() for rel in readonly}
    return dataclasses.replace(target, readonly_hashes=hashes, contents=contents)


def format_command(command: str, **values) -> list[str]:
    """Split a command template into argv, filling {python}, {seed}, {budget_seconds}, ... placeholders."""
    values.setdefault("python", sys.executable)
    try:
        return [part.format(**values) for part in shlex.split(command)]
    except KeyError as e:
        raise TargetError(f"command {command!r} uses unknown placeholder {e}; known: {sorted(values)}") from None


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
