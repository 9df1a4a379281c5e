"""`ar-ray sweep`: run a target over a grid of scales for one or several variants, then fit and compare.

Registered on the `ar-ray` group in ar_ray/cli/main.py (main.add_command). The work is in ar_ray/transfer/sweep.py.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from ar_ray.cli.price_flags import price_options
from ar_ray.cli.progress import fmt_metric, fmt_seconds
from ar_ray.engine.config import RunConfig, default_target
from ar_ray.errors import ConfigError
from ar_ray.lab import spend
from ar_ray.ledger.store import LedgerError
from ar_ray.target import TargetError, load_target
from ar_ray.transfer import sweep as S
from ar_ray.transfer import sweep_analysis as A

USER_ERRORS = (S.SweepError, ConfigError, TargetError, LedgerError)


class _NotPositive(ValueError):
    """A number, but not one the flag takes: `need` says what it takes."""

    def __init__(self, need: str):
        super().__init__(need)
        self.need = need


def _values(text: str, what: str, kind=str) -> list:
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise click.BadParameter(f"{text!r}: give comma-separated values, e.g. {what}")
    out = []
    for p in parts:
        try:
            out.append(kind(p))
        except _NotPositive as e:
            raise click.BadParameter(f"{text!r}: every value must be {e.need} (got {p}), e.g. {what}") from None
        except ValueError:
            raise click.BadParameter(f"{text!r}: every value must be a number, e.g. {what}") from None
    return out


def _number(text: str) -> float:
    v = float(text)  # ValueError: not a number
    if math.isnan(v):
        raise ValueError(text)
    return v


def _int(text: str) -> str:
    v = _number(text)
    if not (v > 0 and math.isfinite(v) and v == int(v)):
        raise _NotPositive("a positive integer")
    return str(int(v))


def _positive(text: str) -> float:
    v = _number(text)
    if not (v > 0 and math.isfinite(v)):
        raise _NotPositive("a positive number")
    return v


def build_knobs(depths: str | None, budget_tokens: str | None, knob: tuple[str, ...]) -> dict[str, list[str]]:
    """The knob axes from the flags, in order: depth, budget_tokens, then each --knob."""
    knobs: dict[str, list[str]] = {}
    if depths:
        knobs["depth"] = _values(depths, "--depths 2,3,4", _int)
    if budget_tokens:
        knobs["budget_tokens"] = _values(budget_tokens, "--budget-tokens 100000,200000", _int)
    for k in knob:
        name, eq, vals = k.partition("=")
        name = name.strip()
        if not eq or not name:
            raise click.BadParameter(f"--knob {k!r}: use NAME=v1,v2,... (e.g. --knob lr=0.01,0.02)")
        if name in knobs:
            raise click.BadParameter(f"--knob {name}: this knob is already swept"
                                     + (" (by --depths / --budget-tokens)" if name in ("depth", "budget_tokens") else ""))
        knobs[name] = _values(vals, f"--knob {name}=v1,v2")
    return knobs


@click.command()
@click.option("--target", type=click.Path(file_okay=False), default=None, help="Target folder (default: the bundled GPT target).")
@click.option("--run-dir", type=click.Path(file_okay=False), default=None, help="Where the ledger and logs go (default: runs/sweep-<time>).")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), default=None,
              help="Continue the sweep in this run dir: finished runs are not run again. Grid, variant and --repeats "
                   "flags, when given, replace the stored ones (e.g. more repeats).")
@click.option("--rerun-failed", is_flag=True,
              help="With --resume: run again the runs that finished with a status other than ok (e.g. timeouts).")
@click.option("--analyze", "analyze_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Only redo the analysis of the sweep in this run dir (sweep.json, plots); runs nothing.")
@click.option("--variant", "variants", multiple=True,
              help="baseline (the target as shipped), RUN_DIR (its best), RUN_DIR:EXPERIMENT_ID, or path/to/train.py; "
                   "NAME=... names it. Repeatable; the first is the reference the others are compared to. Default: baseline.")
@click.option("--depths", default=None, help="GPT shorthand for --knob depth=...: e.g. 2,3,4.")
@click.option("--budget-tokens", default=None, help="Token budgets, e.g. 100000,200000 (the knob budget_tokens).")
@click.option("--budgets", default=None, help="Wall-clock budgets in seconds, e.g. 10,20.")
@click.option("--knob", multiple=True, help="NAME=v1,v2,...: any knob, passed to the run as AR_<NAME>. Repeatable.")
@click.option("--paired", is_flag=True,
              help="Take the i-th value of every axis together instead of every combination: a path such as "
                   "--depths 2,4,8 --budget-tokens 100000,400000,1600000 (tokens growing with the model).")
@click.option("--repeats", type=int, default=None, help="Runs of each (variant, scale), seeds 0..n-1 (default 3).")
@click.option("--timeout", type=float, default=None, help="Hard timeout per run in seconds (default: 2 x budget + 60; 30 min for token budgets).")
@click.option("--address", default=None, help="Ray cluster to join ('auto' or host:port); default: a local Ray.")
@click.option("--trainers", type=int, default=None, help="Trainer actors (default: one per GPU; on CPU, one per 2 CPUs).")
@click.option("--gpus-per-trainer", type=float, default=1.0, show_default=True, help="GPUs per trainer.")
@click.option("--cpus-per-trainer", type=float, default=None, help="CPUs per trainer (default: 1 with GPUs, 2 on CPU).")
@click.option("--sandbox", type=click.Choice(["auto", "bwrap", "none"]), default="auto", show_default=True,
              help="Confine the runs with bubblewrap (auto: where the node can).")
@click.option("--bootstrap", type=int, default=1000, show_default=True, help="Bootstrap replicates for the fits' intervals.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Run config TOML whose [prices] price the runs (as for ar-ray run; other tables are not read here).")
@price_options
def sweep(target, run_dir, resume_dir, rerun_failed, analyze_dir, variants, depths, budget_tokens, budgets, knob, paired,
          repeats, timeout,
          address, trainers, gpus_per_trainer, cpus_per_trainer, sandbox, bootstrap, config_file, gpu_price, cpu_price):
    """Scaling sweep: run variants over a grid of scales with repeats, fit L = E + A*C^-alpha, compare the variants.

    \b
    ar-ray sweep --depths 2,3,4 --budget-tokens 100000,200000 --repeats 3
    ar-ray sweep --variant baseline --variant runs/x --depths 2,3,4 --budgets 10,20
    ar-ray sweep --depths 2,4,8 --budget-tokens 100000,400000,1600000 --paired   # 3 scales, not 9
    ar-ray sweep --resume runs/sweep-1 --repeats 5      # more repeats; finished runs are kept
    ar-ray sweep --analyze runs/sweep-1                 # fits and verdicts again, nothing run
    """
    from ar_ray.cli.pipe_guard import guard_console
    from ar_ray.cli.stop_status import StopSignal
    guard_console()  # `ar-ray sweep ... | head`: a console that goes away silences the output, never ends the sweep
    console = Console(highlight=False, soft_wrap=True)
    if analyze_dir:
        given = [resume_dir, run_dir, rerun_failed or None, paired or None, depths, budget_tokens, budgets, repeats, timeout,
                 config_file, cpu_price, *variants, *knob, *gpu_price]
        if any(v is not None and v != () for v in given):
            raise click.UsageError("--analyze only reads a finished sweep; leave out the other sweep flags")
        try:
            result = A.analyze_run(analyze_dir, bootstrap=bootstrap)
        except USER_ERRORS as e:
            raise click.ClickException(str(e)) from None
        _print_analysis(console, result, Path(analyze_dir))
        if result.get("error"):
            raise SystemExit(1)
        return
    if resume_dir and run_dir and Path(resume_dir).resolve() != Path(run_dir).resolve():
        raise click.UsageError("--resume names the sweep to continue; do not also pass a different --run-dir")
    if rerun_failed and not resume_dir:
        raise click.UsageError("--rerun-failed goes with --resume RUN_DIR")
    if repeats is not None and repeats < 1:
        raise click.BadParameter(f"must be at least 1, got {repeats}", param_hint="--repeats")
    knobs = build_knobs(depths, budget_tokens, knob)
    seconds = _values(budgets, "--budgets 10,20", _positive) if budgets else []
    run_dir = resume_dir or run_dir or f"runs/sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    if resume_dir and (Path(resume_dir) / "run.json").exists():  # what the sweep was started with, unless given
        meta = json.loads((Path(resume_dir) / "run.json").read_text())
        target = target or meta.get("target")
        if timeout is None:
            timeout = meta.get("config", {}).get("target_overrides", {}).get("timeout_seconds")
    try:
        gpu_prices, cpu_price = spend.prices_from(config_file, gpu_price, cpu_price)
    except spend.SpendError as e:
        raise click.UsageError(str(e)) from None
    config = RunConfig(target=target or str(default_target()), run_dir=run_dir, resume=bool(resume_dir),
                       address=address, trainers=trainers, gpus_per_trainer=gpus_per_trainer,
                       cpus_per_trainer=cpus_per_trainer, sandbox=sandbox, gpu_prices=gpu_prices, cpu_price=cpu_price,
                       target_overrides={"timeout_seconds": timeout})
    try:
        spec = _spec(config, resume_dir, variants, knobs, seconds, repeats, paired)
        console.print(f"sweep dir: {escape(run_dir)}")
        if spec is not None:
            console.print(f"{len(spec.variants)} variant(s) ({', '.join(spec.names)}) x {len(spec.grid)} scales x "
                          f"{spec.repeats} repeats = {len(spec.variants) * len(spec.grid) * spec.repeats} runs")
        t0 = time.time()
        with StopSignal() as stop:
            summary = S.run_sweep(config, spec, on_row=lambda row, done, total: _print_row(console, row, done, total),
                                  on_event=lambda kind, data: _print_event(console, kind, data),
                                  rerun_failed=rerun_failed)
    except USER_ERRORS as e:
        raise click.ClickException(str(e)) from None
    except Exception as e:  # a target whose setup fails
        from trainers.trainer import SetupError
        if isinstance(e, SetupError):
            raise click.ClickException(str(e)) from None
        raise
    head = "interrupted" if summary["interrupted"] else "finished"
    console.print(f"\n[bold]{head}[/bold] after {fmt_seconds(time.time() - t0)}: {summary['ran']} runs now "
                  f"({summary['failed']} failed, {summary['retries']} retried after a lost trainer), "
                  f"{summary['already_done']} already done, {summary['total']} in the sweep")
    console.print(spend.describe(summary["spend"]) + " (the whole sweep; priced by --gpu-price / --cpu-price, or estimates)")
    result = A.analyze_run(run_dir, bootstrap=bootstrap)
    _print_analysis(console, result, Path(run_dir))
    if summary["interrupted"]:
        console.print(f"continue with: ar-ray sweep --resume {escape(run_dir)}")
        raise SystemExit(stop.exit_code(True))  # 130 Ctrl-C, 143 SIGTERM, as `ar-ray run`


def _spec(config: RunConfig, resume_dir, variants, knobs, seconds, repeats, paired=False) -> S.SweepSpec | None:
    """The sweep spec from the flags; on --resume, what was not given comes from the stored spec (None: all of it)."""
    stored = S.load_spec(resume_dir) if resume_dir else None
    if stored is not None and not (variants or knobs or seconds or repeats):
        return None
    target = load_target(config.target)
    if variants:
        resolved = [S.resolve_variant(v, target) for v in variants]
    elif stored is not None:
        resolved = list(stored.variants)
    else:
        resolved = [S.resolve_variant("baseline", target)]
    scales = S.grid(knobs, seconds, paired) if (knobs or seconds) else (stored.grid if stored is not None else ())
    if not scales:
        raise S.SweepError("the grid is empty: give scales to sweep, e.g. --depths 2,3,4 --budget-tokens 100000,200000, "
                           "--budgets 10,20 (seconds) or --knob NAME=v1,v2,v3")
    n = repeats if repeats is not None else (stored.repeats if stored is not None else 3)
    return S.SweepSpec(variants=tuple(resolved), grid=scales, repeats=n)


def _print_event(console: Console, kind: str, data: dict) -> None:
    if kind == "note":
        console.print(f"[dim]{escape(data['text'])}[/dim]")
    elif kind == "start":
        left = f"{data['todo']} to run on {data['trainers']} trainer(s)"
        console.print(left + (f", {data['already_done']} already in the ledger" if data["already_done"] else ""))
    elif kind == "retry":
        console.print(f"[yellow]{escape(data['experiment_id'])}: trainer lost, running it again "
                      f"(try {data['try']}): {escape(str(data['error'])[:200])}[/yellow]")


def _print_row(console: Console, row: dict, done: int, total: int) -> None:
    ok = row["status"] == "ok"
    status = "[green]ok[/green]" if ok else f"[red]{escape(row['status'])}[/red]"
    extra = f"{fmt_metric(row['metric'])}" if ok else escape((row.get("error") or "").strip().splitlines()[-1][:120]
                                                             if (row.get("error") or "").strip() else "")
    secs = row.get("run_seconds")
    console.print(escape(f"[{done}/{total}]") + f" {escape(row['experiment_id'])}  {status}  {extra}"
                  + (f"  ({secs:.1f} s, {escape(str(row.get('trainer') or ''))})" if secs else ""))


def _print_analysis(console: Console, result: dict, run_dir: Path) -> None:
    console.print("\n[bold]analysis[/bold]")
    for line in A.describe(result):
        console.print(escape(line))
    for name in result.get("plots", []):
        console.print(f"wrote {escape(str(run_dir / name))}")
    console.print(f"wrote {escape(str(run_dir / S.SWEEP_JSON))}")


COMMANDS = (sweep,)
