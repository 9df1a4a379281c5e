"""`ar-ray check [TARGET]`: is this target ready for a research run? Minutes on one machine, no Ray.

It reads the contract as `ar-ray run` would, runs the unmodified target a few times with different seeds
(the same `Trainer` and sandbox as a run), and reports what a run would meet: the noise floor or a
deterministic target, whether the budget is a clock, what the proposers would see, and what a GPU-hour
buys. The report is built as data (`Report`: sections of lines, and findings with a level), then printed.
A finding of level `fix` makes the verdict "not ready" and the exit code 1.

Its runs go to a temporary folder `ar-ray-check-<identity of the process>-*` that nothing outlives: removed at the
end, also when the check is stopped with Ctrl-C, SIGTERM or SIGHUP (its runs are ended first, then the folder
goes, then it exits with 128 + the signal's number); a check SIGKILLed cannot clean up, so each check starts by
removing the folders of checks whose process is gone (their runs' reapers ended the processes already).
The log of a run the report says must be fixed (a failed run, a metric pattern that matches nothing) is copied
first to `runs/check-<time>/<run>.log` in the current folder (--log-dir), which the report names: `runs` is where
`ar-ray run` writes too, and neither a target's files nor what is shipped to a cluster include it.
"""

from __future__ import annotations

import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from ar_ray.cli.check_scratch import GRACE_SECONDS, STOP_SIGNALS, Interrupted, _interrupt, scratch_folder
from ar_ray.cli.names_read import names_in_code
from ar_ray.target import CONFIG_NAME, Target, TargetError, load_target

LARGE_BYTES = 2**20  # a read-only file above this is copied into every run: it is data
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".pt.tar", ".pkl", ".npz")
OUTPUT_DIRS = re.compile(r"^(out|outs|output|outputs|checkpoints?|ckpts?|wandb|logs?|lightning_logs|mlruns|runs|"
                         r"out[-_].*|.*cache.*)$", re.IGNORECASE)
# defaults of `ar-ray run` the estimates use (its --k-confirm, --confirm-runs, --baseline-repeats)
K_CONFIRM, CONFIRM_RUNS, BASELINE_REPEATS = 2.0, 2, 3
LEVELS = ("ok", "info", "warn", "fix")
LOGS_HOME = "runs"  # failing runs' logs are kept under ./runs/check-<time>/ (as `ar-ray run` writes under ./runs/)


@dataclass
class Finding:
    level: str  # ok | info | warn | fix
    text: str


@dataclass
class Report:
    target: str
    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    facts: dict = field(default_factory=dict)  # numbers and flags, for tests and scripts

    def add(self, level: str, text: str) -> None:
        self.findings.append(Finding(level, text))

    def section(self, title: str, lines: list[str]) -> None:
        self.sections.append((title, lines))

    @property
    def verdict(self) -> str:
        levels = {f.level for f in self.findings}
        if "fix" in levels:
            return "not ready: fix the problems marked FIX first"
        return "ready, with warnings" if "warn" in levels else "ready"

    @property
    def exit_code(self) -> int:
        return 1 if any(f.level == "fix" for f in self.findings) else 0


# ---- the contract ----

def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.1f} KB" if n >= 1024 else f"{n} B"


def contract_lines(target: Target) -> list[str]:
    budget = (f"{target.budget_tokens:,} tokens" if target.budget_tokens else
              f"{target.budget_seconds:g} s" + (f" (CPU: {target.cpu_budget_seconds:g} s)" if target.cpu_budget_seconds else ""))
    ro_bytes = sum(len(target.contents[r]) for r in target.readonly)
    return [f"folder      {target.root}",
            f"editable    {', '.join(target.editable)}",
            f"read-only   {len(target.readonly)} file(s), {_size(ro_bytes)} copied into every run"
            + (f": {', '.join(target.readonly[:6])}{' ...' if len(target.readonly) > 6 else ''}" if target.readonly else ""),
            f"data        {', '.join(target.data) or '(none declared)'}",
            f"setup       {target.setup or '(none)'}",
            f"command     {target.command}",
            f"metric      {target.metric} ({'lower' if target.direction == 'min' else 'higher'} is better), "
            f"pattern {target.metric_pattern}",
            f"budget      {budget}; hard timeout {target.hard_timeout:.0f} s"]


def _leftover(rel: str) -> str | None:
    """Why a read-only file looks like an output of an earlier run rather than part of the target (None if not)."""
    parts = Path(rel).parts
    if rel.endswith(CHECKPOINT_SUFFIXES):
        return "a checkpoint"
    if len(parts) > 1 and any(OUTPUT_DIRS.match(p) for p in parts[:-1]):
        return "in an output or cache folder"
    return None


def contract_problems(target: Target, report: Report) -> None:
    for rel in target.readonly:
        if why := _leftover(rel):
            report.add("warn", f"read-only {rel} is {why}: a leftover output becomes read-only in every run and a "
                               f"run that writes it fails. Remove it from the target folder, or list readonly in "
                               f"ar-ray.toml without it")
    for rel in target.readonly:
        n = len(target.contents[rel])
        if n > LARGE_BYTES and not _leftover(rel):
            report.add("warn", f"read-only {rel} is {_size(n)}, copied into every run: it is data. Move it out of the "
                               f"target folder, list its path under data = [...] in ar-ray.toml and read it from "
                               f"there (or build it with setup)")


# ---- the baseline runs ----

def detect_gpus() -> list[int]:
    """This machine's GPU ids (nvidia-smi -L), or [] for a CPU run."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    n = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    return [0] if out.returncode == 0 and n else []


class SetupFailed(RuntimeError):
    def __init__(self, message: str, output: str = ""):
        super().__init__(message)
        self.output = output  # what the setup printed


class LogKeeper:
    """Copies the logs the report points to out of the check's temporary folder (which goes when the check ends)
    into `folder`, made at the first copy. `keep` returns the copy's path, or None and `problem` says why not."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.made: Path | None = None
        self.problem = ""

    def keep(self, name: str, source: str | None = None, text: str | None = None) -> str | None:
        try:
            if self.made is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                self.made = self.folder.resolve()
            dst = self.made / f"{name}.log"
            if text is not None:
                dst.write_text(text)
            else:
                shutil.copyfile(source, dst)
            return str(dst)
        except OSError as e:
            self.problem = f"could not keep the log in {self.folder}: {e.strerror or e}"
            return None


def default_log_dir() -> Path:
    """runs/check-<time> in the current folder, with a suffix if a check of the same second has it."""
    base = Path(LOGS_HOME) / f"check-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _kept(keeper: LogKeeper | None, name: str, source: str) -> str:
    """The words that end a finding about a run's log: where the copy is, or why there is none (never the path in the
    temporary folder, which is gone when the check ends)."""
    where = keeper.keep(name, source) if keeper else None
    if where:
        return f"full log kept in {where}"
    return f"its log was not kept ({keeper.problem})" if keeper and keeper.problem else "its log was not kept"


def run_setup(target: Target, work: Path) -> float | None:
    """Run the target's setup command once, as a trainer would before its first run (it must be idempotent and
    cheap when its cache is there; run here every time, since a trainer's marker may outlive the cache it made).
    Returns its wall time, None without a setup; SetupFailed says why it failed."""
    from ar_ray.target import format_command, materialize
    from trainers.trainer import child_env
    if not target.setup:
        return None
    setup_dir = work / "setup"
    materialize(target, target.read_editable(), setup_dir)
    argv = format_command(target.setup, run_dir=str(setup_dir), seed=0, budget_seconds=target.budget_seconds or "",
                          budget_tokens=target.budget_tokens or "", result_file=str(setup_dir / "result.json"))
    t0 = time.monotonic()
    try:
        done = subprocess.run(argv, cwd=setup_dir, env=child_env(target, {}), capture_output=True, text=True,
                              timeout=target.hard_timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise SetupFailed(f"setup {target.setup!r} ran past {target.hard_timeout:.0f} s") from None
    if done.returncode != 0:
        tail = " / ".join((done.stdout + done.stderr).strip().splitlines()[-4:])
        raise SetupFailed(f"setup {target.setup!r} failed (exit {done.returncode}): {tail}", done.stdout + done.stderr)
    return time.monotonic() - t0


def run_baseline(target: Target, work: Path, repeats: int, sandbox: str, gpus: list[int],
                 seed: int = 0, budget_seconds: float | None = None, knobs: dict | None = None, tag: str = "check"):
    """Run the unmodified target `repeats` times with seeds seed, seed + 1, ...: the Results."""
    from ar_ray.types import Candidate
    from trainers.sandbox import Sandbox
    from trainers.trainer import Trainer
    trainer = Trainer(target, str(work), name="check", gpu_ids=gpus, box=Sandbox(mode=sandbox), cpus=2.0,
                      grace_seconds=GRACE_SECONDS)
    files = target.read_editable()
    try:
        return [trainer.run(Candidate(experiment_id=f"{tag}-{i}", base_version=0, files=files, seed=seed + i,
                                      budget_seconds=budget_seconds, knobs=dict(knobs or {})))
                for i in range(repeats)]
    finally:
        trainer.close()  # (the child a target with `prestart` has pre-started for a next run)


def _spread(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def metric_values(log_path: str, pattern: str) -> list[str]:
    """Every value the metric pattern captures in a run's log, in order."""
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return []
    return [m.group(1) for m in re.finditer(pattern, text, re.MULTILINE)]


def _last_lines(log_path: str, n: int = 15) -> list[str]:
    try:
        lines = Path(log_path).read_text(errors="replace").rstrip().splitlines()
    except OSError as e:
        return [f"(the log could not be read: {e.strerror or e})"]
    return lines[-n:] or ["(the run printed nothing)"]


def baseline_section(target: Target, results, report: Report, keeper: LogKeeper | None = None) -> None:
    """`keeper`: where the logs the findings point to are kept (None: they are not)."""
    lines = []
    for r in results:
        wall = r.child_seconds + r.overhead_seconds
        lines.append(f"{r.experiment_id}  seed {r.experiment_id.rsplit('-', 1)[-1]}  {r.status:<9} "
                     f"{target.metric} {r.metric if r.metric is not None else '-'}  wall {wall:.1f} s")
    if (took := report.facts.get("setup_seconds")) is not None:
        lines.append(f"setup ({target.setup}): {took:.1f} s, once per node")
    report.section(f"Baseline runs ({len(results)}, different AR_SEED)", lines)
    bad = [r for r in results if r.status != "ok"]
    for r in bad[:1]:
        tail = (r.error_tail or "").strip().splitlines()
        report.add("fix", f"the unmodified target does not run: {r.experiment_id} ended {r.status}"
                          + (f" ({' / '.join(tail[-4:])})" if tail else "") + f"; {_kept(keeper, r.experiment_id, r.log_path)}")
        if tail:
            report.section(f"Log of {r.experiment_id} ({r.status}), its last lines", tail)
    for r in results[:1]:
        values = metric_values(r.log_path, target.metric_pattern)
        if not values:
            shown = bool(bad) and r is bad[0]  # its log is kept and shown already
            where = "its log is named above" if shown else _kept(keeper, r.experiment_id, r.log_path)
            report.add("fix", f"the metric pattern {target.metric_pattern!r} matches no line of the log of "
                              f"{r.experiment_id} ({where}); print a line such as '{target.metric}: 1.234' at the "
                              f"end of the run or set metric_pattern in ar-ray.toml")
            if not shown:
                report.section(f"Log of {r.experiment_id}, its last lines (none matches the metric pattern)",
                               _last_lines(r.log_path))
        elif len(set(values)) > 1:
            report.add("warn", f"the metric pattern matches {len(values)} lines with {len(set(values))} different "
                               f"values ({', '.join(values[:4])}{' ...' if len(values) > 4 else ''}); the last one "
                               f"counts. Make it match only the final metric line (e.g. anchor it with ^ and a name "
                               f"printed once)")
    walls = [r.child_seconds + r.overhead_seconds for r in results]
    report.facts["all_ok"] = not bad
    report.facts["wall_mean"] = statistics.mean(walls) if walls else None
    report.facts["wall_spread"] = _spread(walls)
    metrics = [r.metric for r in results if r.status == "ok" and r.metric is not None]
    report.facts["metrics"] = metrics
    report.facts["noise"] = None
    report.facts["deterministic"] = None
    if walls:
        lines.append(f"wall time: mean {statistics.mean(walls):.1f} s, spread (sd) {_spread(walls):.2f} s")
    if len(metrics) < 2:
        return
    noise = _spread(metrics)
    report.facts["noise"] = noise
    report.facts["deterministic"] = noise == 0.0
    if noise == 0.0:
        lines.append(f"{target.metric}: {metrics[0]:g} in every run")
        report.add("warn", "deterministic: ignores AR_SEED (every run gave the same metric). The noise floor is 0: a "
                           "run then tries each candidate once and keeps any strict gain; seed the run from "
                           "AR_SEED if its result should vary with the seed")
    else:
        mean = statistics.mean(metrics)
        lines.append(f"{target.metric}: mean {mean:.6g}, noise floor (sd across seeds) {noise:.3g}"
                     + (f" ({100 * noise / abs(mean):.2g} % of the mean)" if mean else ""))
        report.add("ok", f"noise floor {noise:.3g} ({target.metric} sd across {len(metrics)} seeds)")


# ---- the budget ----

def budget_kind(target: Target) -> str:
    return "tokens" if target.budget_tokens else "seconds"


def reads_budget(target: Target) -> list[str]:
    """Where the target reads its budget: code that names AR_BUDGET_<KIND> (names_in_code), or the command's
    {budget_<kind>}."""
    kind = budget_kind(target)
    name = f"AR_BUDGET_{kind.upper()}"
    where = [rel for rel, data in target.contents.items() if names_in_code(rel, data, name)]
    if f"{{budget_{kind}}}" in target.command:
        where.append("command")
    return where


def budget_section(target: Target, report: Report, half=None) -> None:
    """`half`: the Results of a run at half the budget (--budget-check), or None."""
    kind = budget_kind(target)
    where = reads_budget(target)
    lines = [f"budget in {kind}: " + (f"read in {', '.join(where)}" if where else
                                      f"AR_BUDGET_{kind.upper()} is named in no editable or read-only file's code")]
    measured = None
    mean, spread = report.facts.get("wall_mean"), report.facts.get("wall_spread") or 0.0
    if half and mean:
        ok = [r for r in half if r.status == "ok"]
        if ok:
            wall = ok[0].child_seconds + ok[0].overhead_seconds
            measured = wall < 0.8 * mean and wall < mean - 2 * spread  # shorter by more than the runs' own spread
            lines.append(f"at half the budget: wall {wall:.1f} s against {mean:.1f} s (sd {spread:.1f} s) at the full "
                         f"budget: {'clearly shorter' if measured else 'not clearly shorter'}")
        else:
            lines.append(f"the run at half the budget ended {half[0].status}")
    ran = report.facts.get("all_ok")  # (runs that crashed say nothing of where a run stops)
    if not target.budget_tokens and mean and where and ran and (budget := report.facts.get("budget_seconds")):
        if mean < 0.5 * budget:
            lines.append(f"the runs end after {mean:.1f} s of a {budget:g} s budget: something else stops them first")
            measured = False if measured is None else measured
    honoured = bool(where) and measured is not False
    report.facts["budget_honoured"] = honoured
    report.section("Budget", lines)
    if honoured:
        report.add("ok", f"the budget ({kind}) is read by the target")
    else:
        report.add("warn", "the budget is not a clock: results depend on the compute you allow. "
                           + (f"The target never reads AR_BUDGET_{kind.upper()}" if not where else
                              "The runs do not stop at the budget")
                           + ", so a candidate can win by training longer or a bigger model; "
                           "make the training loop stop at the budget (read AR_BUDGET_SECONDS or AR_BUDGET_TOKENS "
                           "from the environment)")


# ---- what the proposers see ----

def describe_change(knob) -> str:
    """How mutate would change this value (proposers.mutate.mutate_value, in words)."""
    v = knob.value
    if knob.lo is not None:
        return f"within the declared range [{knob.lo:g}, {knob.hi:g}]"
    if knob.choices:
        return "another of " + ", ".join(map(str, knob.choices))
    if isinstance(v, bool):
        return "flipped"
    if isinstance(v, int):
        return "doubled or halved" if (v > 0 and v & (v - 1) == 0 and v >= 8) or abs(v) >= 16 else "one step up or down"
    if v == 0:
        return "set to 0.01 or 0.1"
    if 0.5 <= v < 1:
        return "its distance to 1 scaled by 0.5-2"
    return "scaled by 0.5-2 (log scale)"


def _examples(knob, n: int = 3) -> str:
    from proposers.mutate import mutate_value, render
    rng = random.Random(0)
    seen = []
    for _ in range(12):
        try:
            new = render(mutate_value(knob, rng), knob.style, knob.quote)
        except ValueError:
            break
        if new not in seen:
            seen.append(new)
        if len(seen) == n:
            break
    return ", ".join(seen)


def proposer_section(target: Target, report: Report, hardware: str) -> None:
    from proposers.llm_config import DEFAULTS
    from proposers.mutate import NoKnobs, applicable, knobs_for
    from proposers.prompt import build_prompt
    lines = []
    try:
        knobs = applicable(knobs_for(target.read_editable(), target.editable, target.knobs, target.knobs_off), hardware)
    except NoKnobs as e:
        knobs = []
        report.add("fix", f"the mutate proposer (the default) has nothing to tune: {e}. Or run with --proposer llm")
    declared = "declared under [knobs]" if target.knobs else "detected"
    if knobs:
        lines.append(f"mutate would tune {len(knobs)} knob(s) ({declared}):")
        for k in knobs:
            lines.append(f"  {k.name} = {k.value!r}  ({k.path}:{k.line})  {describe_change(k)}, e.g. {_examples(k)}")
        report.add("ok", f"mutate tunes {len(knobs)} knob(s): {', '.join(k.name for k in knobs[:12])}"
                         + (" ..." if len(knobs) > 12 else ""))
    report.facts["knobs"] = [k.name for k in knobs]
    budget = DEFAULTS["context_tokens"]
    prompt = build_prompt(target.program_text(), target.read_editable(), target.editable, budget_tokens=budget)
    report.facts["prompt_tokens"] = prompt.tokens
    lines.append(f"an LLM proposer's first prompt: about {prompt.tokens:,} tokens (program + editable files, "
                 f"estimated from characters) of the default context_tokens = {budget:,}")
    if prompt.tokens > budget:
        report.add("warn", f"the editable files alone make a prompt of about {prompt.tokens:,} tokens, over the "
                           f"default context_tokens = {budget:,}: --proposer llm needs a larger context_tokens, or "
                           f"fewer or smaller editable files")
    elif prompt.tokens > budget / 2:
        report.add("info", f"the prompt's files take {100 * prompt.tokens / budget:.0f} % of context_tokens: an LLM "
                           f"proposer sees little history")
    if not target.program:
        lines.append("no program.md: an LLM proposer gets no research instructions beyond 'improve the metric'")
    report.section("What the proposers see", lines)


# ---- estimates ----

def estimates_section(report: Report, hardware: str) -> None:
    mean, noise = report.facts.get("wall_mean"), report.facts.get("noise")
    lines = []
    if mean:
        per_hour = 3600 / mean
        report.facts["per_hour"] = per_hour
        unit = "GPU-hour" if hardware == "gpu" else "trainer-hour (on this CPU)"
        lines.append(f"experiments per {unit}: about {per_hour:.0f} (3600 s / {mean:.1f} s mean wall per run)")
    if noise is not None:
        factor = math.sqrt(1 / CONFIRM_RUNS + 1 / BASELINE_REPEATS)
        gain = K_CONFIRM * noise * factor
        report.facts["min_gain"] = gain
        if noise == 0:
            lines.append("smallest detectable gain: any strict gain (deterministic target)")
        else:
            lines.append(f"smallest gain confirm mode can accept: about {gain:.3g} = k_confirm {K_CONFIRM:g} x noise "
                         f"{noise:.3g} x sqrt(1/confirm_runs {CONFIRM_RUNS} + 1/baseline_repeats {BASELINE_REPEATS}) "
                         f"(the run's defaults, once the noise is well measured: while it rests on few runs the bar "
                         f"widens to Student's t; this noise comes from {len(report.facts['metrics'])} runs, so take it "
                         f"as rough)")
    if lines:
        report.section("Estimates", lines)


# ---- the whole check ----

def check_target(target_dir: str, repeats: int = 3, sandbox: str = "auto", budget_check: bool = False,
                 overrides: dict | None = None, gpus: list[int] | None = None, seed: int = 0,
                 end_children: bool = False, log_dir: str | os.PathLike | None = None) -> Report:
    """Run every check on the target folder and return the Report (nothing printed). `end_children`: see
    scratch_folder (the `ar-ray check` command). `log_dir`: where the logs of failing runs are kept (default
    runs/check-<time> in the current folder; made only when one is kept)."""
    report = Report(target=str(target_dir))
    try:
        target = load_target(target_dir, **(overrides or {}))
    except TargetError as e:
        report.add("fix", f"the target contract does not load: {e}")
        return report
    report.target = target.name
    gpus = detect_gpus() if gpus is None else gpus
    hardware = "gpu" if gpus else "cpu"
    report.facts["budget_seconds"] = target.budget_for(len(gpus))
    report.section("Contract", contract_lines(target))
    contract_problems(target, report)
    keeper = LogKeeper(log_dir if log_dir is not None else default_log_dir())
    with scratch_folder(end_children) as tmp:
        work = tmp / "work"
        work.mkdir()
        try:
            if (took := run_setup(target, work)) is not None:
                report.facts["setup_seconds"] = took
            results = run_baseline(target, work, repeats, sandbox, gpus, seed=seed)
        except SetupFailed as e:
            where = keeper.keep("setup", text=e.output)
            report.add("fix", f"could not run the target: {e}; "
                              + (f"its output kept in {where}" if where else keeper.problem or "its output was not kept"))
            results = []
        except Exception as e:  # a sandbox that cannot work here
            report.add("fix", f"could not run the target: {e}")
            results = []
        if results:
            baseline_section(target, results, report, keeper)
        half = None
        if budget_check and results and all(r.status == "ok" for r in results):
            half = _half_budget_run(target, work, sandbox, gpus, seed)
        if results:
            budget_section(target, report, half)
    proposer_section(target, report, hardware)
    estimates_section(report, hardware)
    return report


def _half_budget_run(target: Target, work: Path, sandbox: str, gpus: list[int], seed: int):
    if target.budget_tokens:
        return run_baseline(target, work, 1, sandbox, gpus, seed=seed, tag="half",
                            knobs={"budget_tokens": max(1, target.budget_tokens // 2)})
    budget = target.budget_for(len(gpus))
    return run_baseline(target, work, 1, sandbox, gpus, seed=seed, tag="half", budget_seconds=(budget or 0) / 2 or None)


MARK = {"ok": "ok  ", "info": "note", "warn": "WARN", "fix": "FIX "}


def render(report: Report, seconds: float | None = None) -> str:
    out = [f"ar-ray check: {report.target}"]
    for title, lines in report.sections:
        out += ["", f"== {title} =="] + [f"  {line}" for line in lines]
    if report.findings:
        out += ["", "== Findings =="]
        order = sorted(report.findings, key=lambda f: -LEVELS.index(f.level))
        out += [f"  {MARK[f.level]} {f.text}" for f in order]
    took = f" (check took {seconds:.0f} s)" if seconds is not None else ""
    out += ["", f"verdict: {report.verdict}{took}"]
    return "\n".join(out)


def default_check_target(cwd: Path) -> tuple[str, str]:
    """What `ar-ray check` without TARGET checks, and a phrase saying which: the folder it is run in when that is a
    target (it holds an ar-ray.toml), else the bundled GPT target."""
    if (cwd / CONFIG_NAME).is_file():
        return str(cwd), f"the current folder {cwd} (it holds {CONFIG_NAME})"
    from ar_ray.engine.config import default_target
    bundled = default_target()
    return str(bundled), (f"the bundled GPT target {bundled} (the current folder has no {CONFIG_NAME}; "
                          "pass a folder to check another target)")


@click.command("check")
@click.argument("target", required=False, type=click.Path(file_okay=False))
@click.option("--repeats", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Baseline runs, each with its own AR_SEED (2 or more measure the noise floor).")
@click.option("--sandbox", type=click.Choice(["auto", "bwrap", "none"]), default="auto", show_default=True,
              help="How the runs are confined (as in ar-ray run).")
@click.option("--budget-check", is_flag=True, help="Run once more at half the budget and compare the wall time.")
@click.option("--budget", type=float, default=None, help="Training budget in seconds per run (overrides the target).")
@click.option("--budget-tokens", type=int, default=None, help="Train for this many tokens (overrides the target).")
@click.option("--timeout", type=float, default=None, help="Hard timeout per run in seconds.")
@click.option("--seed", type=int, default=0, show_default=True, help="The first run's AR_SEED; each repeat adds 1.")
@click.option("--log-dir", type=click.Path(file_okay=False), default=None,
              help="Where the logs of failing runs are kept (default: runs/check-<time>, made only if a run fails).")
def check(target, repeats, sandbox, budget_check, budget, budget_tokens, timeout, seed, log_dir):
    """Check a target before a run: its contract, noise floor, budget, knobs and throughput (no Ray).

    Without TARGET: the current folder when it holds an ar-ray.toml, else the bundled GPT target."""
    if target is None:
        target, why = default_check_target(Path.cwd())
        click.echo(f"ar-ray check: no TARGET given; checking {why}", err=True)
    overrides = {"budget_seconds": budget, "cpu_budget_seconds": budget, "budget_tokens": budget_tokens,
                 "timeout_seconds": timeout}
    t0 = time.monotonic()
    # on a stop signal the runs end and the folder goes, then it exits (signal handlers: main thread only)
    main = threading.current_thread() is threading.main_thread()
    saved = {s: signal.signal(s, _interrupt) for s in STOP_SIGNALS} if main else {}
    try:
        report = check_target(target, repeats=repeats, sandbox=sandbox,
                              budget_check=budget_check, overrides=overrides, seed=seed, end_children=True,
                              log_dir=log_dir)
    except Interrupted as e:
        click.echo(f"ar-ray check: stopped by {e}; its runs were ended and its temporary folder removed", err=True)
        raise SystemExit(128 + e.signum) from None
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    click.echo(render(report, time.monotonic() - t0))
    raise SystemExit(report.exit_code)

