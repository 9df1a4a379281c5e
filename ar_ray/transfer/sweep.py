"""Scaling sweeps: run a target at several scales, for one or several variants, with repeats, on the cluster.

A sweep is a run like any other: a run dir with `run.json` (its spec included) and a ledger with one row per run
(role "sweep", group_id = the variant), resumable with `--resume`. `ar_ray.transfer.scaling` does the statistics.

    from ar_ray.transfer import sweep as S
    spec = S.SweepSpec(variants=[("baseline", target.read_editable()), ("mine", my_files)],
                       grid=S.grid({"depth": ["2", "3", "4"], "budget_tokens": ["100000", "200000"]}), repeats=3)
    S.plan_runs(spec)                 # Candidates: ids like baseline-d2-tok100k-r0, seed = repeat
    S.run_sweep(config, spec)         # spread over the trainers; ids already in the ledger are not run again
    S.analyze(ledger.load(run_dir), run_dir)   # fits, tokens/param, each variant against the first -> sweep.json, PNGs

A scale is a set of knobs (passed to the child as AR_<NAME> env vars: the GPT target reads AR_DEPTH and
AR_BUDGET_TOKENS) and an optional wall-clock budget. Runs are ordered repeat by repeat, and within a scale
variant by variant, so a sweep stopped early has every scale of every variant covered as evenly as it can.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import os
import re
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ar_ray.code.codehash import code_hash
from ar_ray.engine.config import RunConfig
from ar_ray.ledger.store import RUN_FILE, Ledger, load
from ar_ray.search.scale import Scale, ScaleError, _slug, reserved_knob
from ar_ray.search.scale import as_scale as _as_scale
from ar_ray.target import Target, load_target
from ar_ray.types import Candidate, Proposal, Result

ROLE = "sweep"
DECISION = "sweep"  # not a research decision: every sweep run is simply recorded
MAX_TRIES = 4  # runs of one candidate lost with their trainer before it is recorded as "infra" (1 + 3 re-queues, as the driver)
TICK = 0.5
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+]*$")
KNOB = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# set by the trainer itself: a knob of the same name would fight it
FIT_PNG, GAIN_PNG, SWEEP_JSON = "sweep_fit.png", "sweep_gain.png", "sweep.json"


class SweepError(ValueError):
    """A sweep that cannot run or be analysed; the message says what to do."""


# ---------------------------------------------------------------------------
# the spec
# ---------------------------------------------------------------------------


def _checked_scale(s) -> Scale:
    try:
        return _as_scale(s)
    except ScaleError as e:
        raise SweepError(str(e)) from None


@dataclass(frozen=True)
class SweepSpec:
    """What to run: variants (name, editable files), the grid of scales, and repeats of each (variant, scale)."""
    variants: tuple[tuple[str, dict[str, str]], ...]
    grid: tuple[Scale, ...]
    repeats: int = 3

    def __post_init__(self):
        variants = tuple((str(n), dict(f)) for n, f in self.variants)
        grid = tuple(_checked_scale(s) for s in self.grid)
        object.__setattr__(self, "variants", variants)
        object.__setattr__(self, "grid", grid)
        if not variants:
            raise SweepError("no variant to run: give at least one (--variant baseline)")
        names = [n for n, _ in variants]
        for n in names:
            if not NAME.match(n) or len(n) > 64:
                raise SweepError(f"variant name {n!r} must be 1-64 letters, digits, '_', '.' or '+', starting with a "
                                 "letter or digit (it becomes part of experiment ids); name it with NAME=SPEC")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SweepError(f"variant name(s) {dup} given twice; name each with NAME=SPEC (e.g. --variant mine=train.py)")
        if not grid:
            raise SweepError("the grid is empty: give scales to sweep (--depths, --budget-tokens, --budgets or --knob)")
        for s in grid:
            for k in s.knobs:
                if not KNOB.match(k):
                    raise SweepError(f"knob name {k!r} must be a valid environment variable suffix (letters, digits, _), "
                                     f"passed to the run as AR_{k.upper()}")
                if why := reserved_knob(k):
                    raise SweepError(why)
            if s.budget_seconds is not None and not s.budget_seconds > 0:
                raise SweepError(f"budgets must be positive seconds, got {s.budget_seconds:g}")
        labels = [s.label for s in grid]
        dup = sorted({lab for lab in labels if labels.count(lab) > 1})
        if dup:
            raise SweepError(f"the grid has the same scale twice: {dup}")
        if int(self.repeats) < 1:
            raise SweepError(f"--repeats must be at least 1, got {self.repeats}")
        object.__setattr__(self, "repeats", int(self.repeats))

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.variants]

    def to_dict(self) -> dict:
        return {"variants": [{"name": n, "files": f} for n, f in self.variants],
                "grid": [s.to_dict() for s in self.grid], "repeats": self.repeats}

    @classmethod
    def from_dict(cls, d: dict) -> "SweepSpec":
        return cls(variants=tuple((v["name"], v["files"]) for v in d["variants"]),
                   grid=tuple(_checked_scale(s) for s in d["grid"]), repeats=d["repeats"])


def grid(knobs: dict[str, list[str]] | None = None, budgets: list[float] | None = None,
         paired: bool = False) -> tuple[Scale, ...]:
    """Every combination of the knobs' values (in the order given) and of the budgets (seconds), budgets last.
    `paired`: the i-th value of every axis together instead (a path through the grid, e.g. depth with
    proportionally more tokens: the compute-optimal frontier), so every axis needs as many values."""
    knobs = {k: [str(v) for v in vs] for k, vs in (knobs or {}).items()}
    for k, vs in knobs.items():
        if not vs:
            raise SweepError(f"knob {k!r} has no values")
    budgets = [float(b) for b in (budgets or [])]
    if not knobs and not budgets:
        return ()
    axes = list(knobs.values()) + ([budgets] if budgets else [])
    if paired and len({len(a) for a in axes}) > 1:
        sizes = ", ".join(f"{name} {len(a)}" for name, a in zip([*knobs, "budgets"], axes))
        raise SweepError(f"a paired sweep takes the i-th value of every axis together, so every axis needs the same "
                         f"number of values; got {sizes}")
    out = []
    for combo in (zip(*axes) if paired else itertools.product(*axes)):
        values = dict(zip(knobs, combo[:len(knobs)]))
        out.append(Scale(values, combo[-1] if budgets else None))
    return tuple(out)


def experiment_id(variant: str, scale: Scale, repeat: int) -> str:
    return f"{variant}-{scale.label}-r{repeat}"


def plan_runs(spec: SweepSpec) -> list[Candidate]:
    """Every run of the sweep, repeat by repeat, then scale by scale, then variant by variant. Deterministic ids
    `{variant}-{scale}-r{i}` and seed i, so a resumed sweep recognises what it already ran."""
    out = []
    for i in range(spec.repeats):
        for s in spec.grid:
            for name, files in spec.variants:
                out.append(Candidate(experiment_id=experiment_id(name, s, i), base_version=0, files=files, seed=i,
                                     budget_seconds=s.budget_seconds, knobs=dict(s.knobs)))
    return out


def _label_of(experiment: str, variant: str) -> str:
    """The scale label inside `{variant}-{label}-r{i}`."""
    rest = experiment[len(variant) + 1:] if experiment.startswith(variant + "-") else experiment
    return re.sub(r"-r\d+$", "", rest)


# ---------------------------------------------------------------------------
# variants: the target as shipped, the best of a run, one experiment of a run, or a file
# ---------------------------------------------------------------------------


def _run_files(run_dir: Path, experiment: str | None, target: Target) -> dict[str, str]:
    from ar_ray.code import answers, edits
    from ar_ray.ledger import analysis
    from ar_ray.ledger.store import LedgerError

    try:
        df = load(run_dir)
    except LedgerError as e:
        raise SweepError(str(e)) from None
    if experiment is None:
        files = analysis.best_files(df)
        if not isinstance(files, dict):
            raise SweepError(f"{run_dir} has no finished baseline or kept change: no best files to sweep")
        return dict(files)
    rows = df[df["experiment_id"] == experiment]
    if rows.empty:
        raise SweepError(f"no experiment {experiment!r} in {run_dir} (`ar-ray ledger {run_dir}` lists them)")
    stored = [f for f in rows["files"] if isinstance(f, dict)]
    if stored:
        return dict(stored[-1])
    r = rows[rows["role"] == "screen"].iloc[0] if (rows["role"] == "screen").any() else rows.iloc[-1]
    if not isinstance(r["diff"], str) or not r["diff"]:
        raise SweepError(f"{experiment} in {run_dir} has neither stored files nor a diff (it never made an edit)")
    # its files are its diff applied to the best it was made from (files are stored for baseline and kept rows)
    versions = {}
    for b in df[df["decision"].isin(["keep", "baseline"])].itertuples():
        if isinstance(b.files, dict) and pd.notna(b.best_version):
            versions.setdefault(int(b.best_version), b.files)
    base = versions.get(int(r["base_version"])) if pd.notna(r["base_version"]) else None
    if base is None:
        raise SweepError(f"cannot rebuild {experiment}'s files: the files of version {r['base_version']} it was made "
                         f"from are not in {run_dir}'s ledger")
    try:
        files = edits.apply_edits(dict(base), answers.parse_answer(r["diff"], base, set(target.editable)),
                                  set(target.editable))
    except edits.EditError as e:
        raise SweepError(f"cannot rebuild {experiment}'s files from its diff: {e}") from None
    if isinstance(r["edit_hash"], str) and r["edit_hash"] and code_hash(files) != r["edit_hash"]:
        raise SweepError(f"{experiment}'s files rebuilt from its diff do not match its recorded hash")
    return files


def resolve_variant(text: str, target: Target) -> tuple[str, dict[str, str]]:
    """One --variant: `baseline` (the target as shipped), RUN_DIR (that run's current best), RUN_DIR:EXPERIMENT_ID
    (one experiment's files) or path/to/file (replaces the editable file of the same name, or the only one);
    `NAME=` in front names it."""
    name = None
    m = re.match(r"^([A-Za-z0-9][A-Za-z0-9_.+]*)=(.+)$", text)
    if m and not Path(text).exists():
        name, text = m[1], m[2]
    shipped = target.read_editable()
    if text == "baseline":
        return name or "baseline", shipped
    path = Path(text)
    if path.is_dir():
        if not (path / "ledger").is_dir():
            raise SweepError(f"variant {text!r}: {path} is a folder but not a run dir (no ledger/ inside)")
        return name or _slug(path.resolve().name), _run_files(path, None, target)
    if path.is_file():
        editable = list(target.editable)
        rel = next((e for e in editable if Path(e).name == path.name), editable[0] if len(editable) == 1 else None)
        if rel is None:
            raise SweepError(f"variant {text!r}: the target has several editable files {editable}; name the file like one "
                             "of them, or pass a run dir")
        files = {**shipped, rel: path.read_text()}
        default = path.stem if path.stem != Path(rel).stem else path.resolve().parent.name
        return name or _slug(default), files
    run, _, exp = text.rpartition(":")
    if run and exp and Path(run).is_dir():
        if not (Path(run) / "ledger").is_dir():
            raise SweepError(f"variant {text!r}: {run} is not a run dir (no ledger/ inside)")
        return name or _slug(exp), _run_files(Path(run), exp, target)
    raise SweepError(f"unknown variant {text!r}: use baseline, a RUN_DIR, RUN_DIR:EXPERIMENT_ID or a path to a file "
                     "(NAME=... in front names it)")


# ---------------------------------------------------------------------------
# running it
# ---------------------------------------------------------------------------


def load_spec(run_dir: str | os.PathLike) -> SweepSpec:
    meta = Path(run_dir) / RUN_FILE
    if not meta.exists():
        raise SweepError(f"{run_dir} holds no run ({RUN_FILE} missing)")
    d = json.loads(meta.read_text())
    if "sweep" not in d:
        raise SweepError(f"{run_dir} is not a sweep (its {RUN_FILE} has no sweep spec); it was made by `ar-ray run`")
    return SweepSpec.from_dict(d["sweep"])


def _open_run_dir(config: RunConfig, target: Target, spec: SweepSpec | None) -> tuple[str, SweepSpec]:
    run_dir = Path(config.run_dir)
    meta_path = run_dir / RUN_FILE
    if config.resume:
        if not meta_path.exists():
            raise SweepError(f"--resume: {run_dir} holds no sweep ({RUN_FILE} missing)")
        meta = json.loads(meta_path.read_text())
        stored = load_spec(run_dir)
        if spec is None:
            spec = stored
        old = dict(stored.variants)
        for name, files in spec.variants:
            if name in old and code_hash(old[name]) != code_hash(files):
                raise SweepError(f"variant {name!r} now has other files than the sweep in {run_dir} ran under that name; "
                                 "give it another name (NAME=SPEC) or start a new sweep")
        meta["sweep"] = spec.to_dict()
        meta_path.write_text(json.dumps(meta, indent=2))
        return meta["run_id"], spec
    if spec is None:
        raise SweepError("no sweep spec given")
    has_ledger = (run_dir / "ledger").is_dir() and any((run_dir / "ledger").glob("part-*.parquet"))
    if has_ledger or meta_path.exists():
        raise SweepError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it, or choose a new --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    meta_path.write_text(json.dumps({"run_id": run_id, "kind": "sweep", "created_at": time.time(),
                                     "target": str(target.root), "metric": target.metric,
                                     "direction": target.direction, "config": json.loads(config.to_json()),
                                     "sweep": spec.to_dict()}, indent=2))
    return run_id, spec


def done_ids(run_dir: str | os.PathLike, rerun_failed: bool = False) -> set[str]:
    """Sweep runs that finished (any status but infra: a lost trainer is no verdict on the run; with
    `rerun_failed`, only status ok counts, so crashed or timed-out runs run again)."""
    from ar_ray.ledger.store import read_table
    ledger_dir = Path(run_dir) / "ledger"
    if not ledger_dir.is_dir():
        return set()
    t = read_table(run_dir).select(["experiment_id", "status", "role"]).to_pylist()
    latest = {r["experiment_id"]: r["status"] for r in t if r["role"] == ROLE}
    return {e for e, st in latest.items() if st == "ok" or (st != "infra" and not rerun_failed)}


@dataclass
class _Flight:
    trainer: int
    cand: Candidate
    tries: int
    dispatched_at: float


def _row(run_id: str, cand: Candidate, r: Result, variant: str, scale: Scale, proposal: Proposal,
         dispatched_at: float, budget: float | None, gpu_cost_usd: float | None = None) -> dict:
    from ar_ray.engine import rows
    p = dataclasses.replace(proposal, description=f"sweep {variant} at {scale.describe()} (repeat {cand.seed})")
    row = rows.result_row(run_id, None, p, cand, r, DECISION, 0, None, dispatched_at, budget, gpu_cost_usd=gpu_cost_usd)
    return rows.with_policy(row, ROLE, variant, {})


def run_sweep(config: RunConfig, spec: SweepSpec | None, on_row=None, on_event=None, rerun_failed: bool = False) -> dict:
    """Run (or resume) a sweep to its end; returns a summary. One ledger row per finished run.

    `spec` None with config.resume: the spec stored in the run dir. Runs already in the ledger are skipped (with
    `rerun_failed`, only those that finished ok; a re-run adds a row, and the analysis reads the last). A run
    whose trainer dies is re-queued (up to MAX_TRIES runs in all). `on_row(row, done, total)` after each row is written;
    `on_event(kind, data)` for "start", "note" (sandbox), "retry". Ctrl-C / SIGTERM stop cleanly: running children
    are killed and not recorded, so `--resume` runs them again."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    from ar_ray.code import edits
    from ar_ray.engine import cluster
    from ar_ray.engine.run import _node_gpu_model, check_sandbox, stop_trainers
    from trainers.trainer import SetupError

    config.check()
    target = load_target(config.target, **config.target_overrides)
    run_id, spec = _open_run_dir(config, target, spec)
    run_dir = Path(config.run_dir).resolve()
    emit = on_event or (lambda kind, data: None)
    started_at = time.time()
    plan_ = plan_runs(spec)
    have = done_ids(run_dir, rerun_failed)
    todo = collections.deque((c, 0) for c in plan_ if c.experiment_id not in have)
    scale_of = {experiment_id(n, s, i): (n, s) for i in range(spec.repeats) for s in spec.grid for n in spec.names}
    shipped = target.read_editable()
    proposals = {}
    for name, files in spec.variants:
        added, removed = edits.diff_stats(shipped, files)
        proposals[name] = Proposal(proposer=ROLE, base_version=0, description="", files=files,
                                   diff=edits.unified_diff(shipped, files), edit_hash=code_hash(files),
                                   lines_added=added, lines_removed=removed, created_at=started_at)
    count = {"ran": 0, "failed": 0, "retries": 0, "by_status": collections.Counter()}
    result = {"run_id": run_id, "run_dir": str(run_dir), "total": len(plan_), "already_done": len(plan_) - len(todo),
              "interrupted": False, "sandbox": []}
    if not todo:
        return {**result, "ran": 0, "failed": 0, "retries": 0, "by_status": {}, "elapsed_seconds": 0.0,
                "spend": _spend(run_dir)}
    ledger = Ledger(run_dir)
    started = cluster.connect(config.address)
    trainers = []
    try:
        nodes = cluster.cluster_resources()
        p = cluster.plan(config, nodes)
        meter = config.spend_meter(p.gpus, p.cpus, target.direction)  # prices each run as the driver does
        meter.default_model = _node_gpu_model(nodes, p.gpus)
        work_root = str(run_dir / "experiments")
        os.makedirs(work_root, exist_ok=True)
        trainers = cluster.start_trainers(p, target, work_root, run_id, config.keep_files, config.box())
        cluster.wait_started(trainers, p=p)  # placed and constructed, or a StartupError naming who is not
        result["sandbox"] = check_sandbox(trainers, lambda kind, _, data: emit("note", data))
        emit("start", {"total": len(plan_), "todo": len(todo), "already_done": result["already_done"],
                       "trainers": len(trainers)})
        free = list(range(len(trainers)))
        running: dict = {}

        def dispatch():
            while free and todo:
                cand, tries = todo.popleft()
                t = free.pop(0)
                running[trainers[t].run.remote(cand)] = _Flight(t, cand, tries, time.time())

        done = result["already_done"]
        previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        try:
            while todo or running:
                dispatch()
                ready, rest = ray.wait(list(running), num_returns=1, timeout=TICK)
                if ready and rest:
                    ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
                landed = [running.pop(ref) for ref in ready]
                free += [f.trainer for f in landed]
                batch = []
                for ref, f in zip(ready, landed):
                    try:
                        r: Result = ray.get(ref)
                    except RayTaskError as e:
                        cause = getattr(e, "cause", None)
                        if isinstance(cause, SetupError):
                            raise cause from None
                        r = Result(f.cand.experiment_id, "infra", error_tail=f"{type(e).__name__}: {cause or e}")
                    except RayActorError as e:
                        r = Result(f.cand.experiment_id, "infra", error_tail=f"trainer lost: {type(e).__name__}")
                    if r.status == "infra" and f.tries + 1 < MAX_TRIES:
                        count["retries"] += 1
                        emit("retry", {"experiment_id": f.cand.experiment_id, "try": f.tries + 2, "error": r.error_tail})
                        todo.appendleft((f.cand, f.tries + 1))  # same id, same seed, the next free trainer
                        continue
                    name, scale = scale_of[f.cand.experiment_id]
                    usd = meter.charge(r.gpu_model, r.started_at, r.ended_at, r.child_seconds)
                    batch.append(_row(run_id, f.cand, r, name, scale, proposals[name], f.dispatched_at,
                                      f.cand.budget_seconds or config.budget_seconds or target.budget_seconds, usd))
                dispatch()  # freed trainers start before the ledger write
                if batch:
                    ledger.append(batch)
                    for row in batch:
                        done += 1
                        count["ran"] += 1
                        count["failed"] += row["status"] != "ok"
                        count["by_status"][row["status"]] += 1
                        if on_row:
                            on_row(row, done, len(plan_))
        except KeyboardInterrupt:
            result["interrupted"] = True
            stop_trainers(trainers)
        finally:
            signal.signal(signal.SIGTERM, previous)
    finally:
        for a in trainers:
            ray.kill(a, no_restart=True)
        if started:
            ray.shutdown()
    return {**result, "ran": count["ran"], "failed": count["failed"], "retries": count["retries"],
            "by_status": dict(count["by_status"]), "elapsed_seconds": time.time() - started_at,
            "spend": _spend(run_dir)}


def _spend(run_dir: Path) -> dict:
    """The sweep's spend from its ledger (every invocation's runs; rows of a sweep before prices count $0)."""
    from ar_ray.lab import spend
    return spend.from_ledger(load(run_dir, columns=["gpu_cost_usd", "cost_usd", "decision", "best_version",
                                                    "best_metric", "gpu_model"]))
