"""The `ar-ray` command line: flags become one RunConfig; the rest reads the ledger."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import click
from click.core import ParameterSource
from rich.console import Console
from rich.table import Table

from ar_ray.cli.durations import parse_duration
from ar_ray.cli.price_flags import price_options
from ar_ray.cli.progress import STATUS_FILE, best_label, fmt_metric, fmt_seconds, render
from ar_ray.engine.config import RunConfig, default_target
from ar_ray.engine.driver import RunAborted
from ar_ray.errors import ConfigError
from ar_ray.ledger import store as ledger_mod
from ar_ray.target import TargetError
from ar_ray.types import STATUSES


class WholeNumber(click.ParamType):
    """A positive whole number, written plainly or as 1e5 / 100_000."""

    name = "integer"

    def convert(self, value, param, ctx):
        try:
            v = float(str(value).replace("_", ""))
        except ValueError:
            v = float("nan")
        if not (v > 0 and v == int(v)):
            self.fail(f"{value!r} is not a positive whole number (e.g. 300000 or 3e5)", param, ctx)
        return int(v)

USER_ERRORS = (ConfigError, TargetError, ledger_mod.LedgerError, RunAborted)


@click.group()
def main():
    """ar-ray: autonomous ML research on a Ray cluster."""


def _fractions(flag: str, text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of fractions, e.g. 0.5,0.75",
                                 param_hint=flag) from None


@main.command()
@click.option("--target", type=click.Path(file_okay=False), default=None, help="Target folder (default: the bundled GPT target).")
@click.option("--run-dir", type=click.Path(file_okay=False), default=None, help="Where the ledger and logs go (default: runs/<time>).")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), default=None, help="Continue the run in this run dir.")
@click.option("--address", default=None, help="Ray cluster to join ('auto' or host:port); default: a local Ray on this machine.")
@click.option("--proposer", default="mutate", show_default=True,
              help="mutate (LLM-free), llm, or package.module:Class for a proposer of your own.")
@click.option("--proposers", type=int, default=2, show_default=True, help="Proposer actors.")
@click.option("--model", default=None, help="LLM model name (--proposer llm).")
@click.option("--base-url", default=None, help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (--proposer llm).")
@click.option("--api-key-env", default=None, help="Environment variable holding the API key (default: OPENAI_API_KEY for OpenAI itself; none for "
                   "another --base-url).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Run config TOML: LLM endpoints with weights, sampling, prices, rate limits; GPU prices ([prices]).")
@click.option("--max-cost", type=float, default=None,
              help="Spend limit in USD of what --cost-counts names (default: no limit). LLM spend only: no new proposal "
                   "is asked for once reached (what is queued runs); with GPU spend: no new candidate starts either.")
@click.option("--cost-counts", default="llm", show_default=True,
              help="What --max-cost counts: llm, gpu or gpu,llm (GPU spend is priced by --gpu-price).")
@click.option("--max-gpu-hours", type=float, default=None,
              help="Start no new candidate once the runs used this many GPU-hours (a trainer's GPUs x run time).")
@price_options
@click.option("--notify", multiple=True, metavar="URL",
              help="Webhook for alerts (Slack, Discord or any URL taking JSON; env:NAME reads it from a variable): "
                   "new best, failure streaks, spend at 50, 80 and 100 percent of a budget, the run's end. Repeatable.")
@click.option("--notify-interval", default="60s", show_default=True,
              help="At most one alert of a kind per webhook per this long; more are folded into the next.")
@click.option("--notify-failures", type=int, default=10, show_default=True,
              help="Failed runs in a row that raise an alert.")
@click.option("--track", multiple=True, metavar="NAME[=WHERE]",
              help="Log every experiment to mlflow, wandb or tensorboard (repeatable), from the driver: mlflow=URI (default "
                   "MLFLOW_TRACKING_URI, else RUN_DIR/mlflow.db), wandb=[ENTITY/]PROJECT (default ar-ray; WANDB_MODE "
                   "applies), tensorboard=DIR (default RUN_DIR/tensorboard). A tracker that is down lags, never the run.")
@click.option("--track-flush", default="30s", show_default=True,
              help="How long the trackers may catch up after the run; what is left: `ar-ray export RUN_DIR --to NAME`.")
@click.option("--max-unusable-in-a-row", type=int, default=20, show_default=True,
              help="Stop the run after this many proposals in a row that could not be used (invalid edits, proposer "
                   "errors; duplicates not counted), saying why the last one failed.")
@click.option("--trainers", type=int, default=None, help="Trainer actors (default: one per GPU; on CPU, one per 2 CPUs).")
@click.option("--gpus-per-trainer", type=float, default=1.0, show_default=True, help="GPUs per trainer; fractions share a GPU.")
@click.option("--cpus-per-trainer", type=float, default=None, help="CPUs per trainer (default: 1 with GPUs, 2 on CPU).")
@click.option("--queue-depth", type=int, default=None, help="Ready proposals kept queued (default: trainers + proposers).")
@click.option("--max-experiments", type=int, default=None, help="Stop after this many new experiments, resumes included (default: no limit; without it or --time-limit the run goes on until Ctrl-C).")
@click.option("--time-limit", default=None, help="Stop starting experiments after this long (e.g. 90s, 15m, 8h; default: no limit).")
@click.option("--budget", type=float, default=None, help="Training budget in seconds per experiment (overrides the target).")
@click.option("--budget-tokens", type=WholeNumber(), default=None,
              help="Train for this many tokens instead of a wall-clock budget (results independent of hardware speed).")
@click.option("--timeout", type=float, default=None, help="Hard timeout per experiment in seconds (default: 2 x budget + 60; for token budgets, 3 x the best's slowest run + 60).")
@click.option("--command", "run_command", default=None, help="Override the target's run command.")
@click.option("--metric", default=None, help="Override the target's metric name; without --metric-pattern, the target's pattern is moved to this name.")
@click.option("--metric-pattern", default=None, help="Regex with one group; the last matching line wins.")
@click.option("--direction", type=click.Choice(["min", "max"]), default=None,
              help="Is a lower or a higher metric better (default: the target's, min for val_bpb).")
@click.option("--acceptance", type=click.Choice(["confirm", "greedy"]), default="confirm", show_default=True,
              help="confirm: beat the best by k x noise, then survive re-runs; greedy: any better run is kept.")
@click.option("--baseline-repeats", type=int, default=3, show_default=True, help="Runs of each best (noise floor).")
@click.option("--confirm-runs", type=int, default=2, show_default=True, help="Re-runs of a screened candidate.")
@click.option("--k", "k", type=float, default=1.0, show_default=True, help="Screen: a run's gain must exceed k x noise.")
@click.option("--max-confirm-runs", type=int, default=4, show_default=True,
              help="A confirmation too close to call (mean gain above half the bar) gets --confirm-runs more runs, "
                   "up to this many in all; set it to --confirm-runs for a fixed number.")
@click.option("--k-confirm", type=float, default=2.0, show_default=True,
              help="Accept: the confirmed mean gain must exceed k-confirm standard errors.")
@click.option("--sanity-gain", type=float, default=None, help="Gains above this get twice the confirmation runs (default: none).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Base seed (AR_SEED); each repeat of the same code adds 1, 2, ...")
@click.option("--keep-files", is_flag=True, help="Keep each experiment's files, not just its log.")
@click.option("--ladder", default=None,
              help="Promotion ladder, cheapest rung first: budgets in seconds and/or NAME=VALUE knobs, e.g. 60,300 or "
                   "budget_tokens=100000,budget_tokens=400000:depth=12. New candidates run at the first rung; accepted "
                   "only at the last.")
@click.option("--promote-fraction", type=float, default=0.25, show_default=True,
              help="A rung promotes candidates in the top fraction of what it has seen (and beating the best by k x noise).")
@click.option("--rescreen", is_flag=True,
              help="With --ladder: a close call at a cheap rung (above half the bar) gets one more run there before "
                   "it is dropped; more real gains when the cheap rung is a poor proxy (docs/BENCHMARKS.md).")
@click.option("--prune", is_flag=True,
              help="Stop a new candidate whose training loss is clearly worse than the best's at the same point of the "
                   "budget (needs the target's progress_pattern); its trainer moves on to the next candidate.")
@click.option("--prune-at", default="0.5,0.75", show_default=True,
              help="--prune checkpoints, as fractions of the budget.")
@click.option("--prune-margin", type=float, default=0.05, show_default=True,
              help="--prune stops a run whose loss is above the best's by more than this fraction.")
@click.option("--sandbox", type=click.Choice(["auto", "bwrap", "none"]), default="auto", show_default=True,
              help="Confine candidate code with bubblewrap; auto falls back to limits and watchdogs where it cannot run.")
@click.option("--max-processes", type=int, default=None, help="Processes a run may have at once (default 512).")
@click.option("--disk-quota-gb", type=float, default=None, help="Size a run dir may reach (default 64).")
@click.option("--max-memory-gb", type=float, default=None,
              help="Memory a CPU run may allocate (default: the trainer's share of the node's RAM).")
def run(target, run_dir, resume_dir, address, proposer, proposers, model, base_url, api_key_env, config_file, max_cost,
        max_unusable_in_a_row,
        trainers, gpus_per_trainer, cpus_per_trainer,
        queue_depth, max_experiments, time_limit, budget, budget_tokens, timeout, run_command, metric, metric_pattern, direction,
        acceptance, baseline_repeats, confirm_runs, max_confirm_runs, k, k_confirm, sanity_gain, seed, keep_files, sandbox,
        max_processes, disk_quota_gb, max_memory_gb, ladder, promote_fraction, rescreen, prune, prune_at, prune_margin,
        cost_counts, max_gpu_hours, gpu_price, cpu_price, notify, notify_interval, notify_failures, track, track_flush):
    """Run the research loop: propose, train, keep what improves."""
    from ar_ray.cli.pipe_guard import guard_console
    from ar_ray.cli.progress import Progress
    from ar_ray.engine.run import check_run_dir, execute
    from trainers.trainer import SetupError

    guard_console()  # `ar-ray run ... | head`: a console that goes away silences the output, never ends the run
    if resume_dir and run_dir and Path(resume_dir).resolve() != Path(run_dir).resolve():
        raise click.UsageError("--resume names the run dir to continue; do not also pass a different --run-dir")
    run_dir = resume_dir or run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}"
    stored = _stored_run(resume_dir) if resume_dir else {}
    target = target or stored.get("target")
    options = {}
    from ar_ray.lab import spend
    try:
        counts = spend.parse_counts(cost_counts)
        gpu_prices, cpu_price = spend.prices_from(config_file, gpu_price, cpu_price)
    except spend.SpendError as e:
        raise click.UsageError(str(e)) from None
    if proposer == "llm":
        from proposers.llm_config import LLMConfigError, build_options
        try:
            options = build_options(model=model, base_url=base_url, api_key_env=api_key_env, config_file=config_file,
                                    max_cost=max_cost if "llm" in counts else None)
        except LLMConfigError as e:
            raise click.ClickException(str(e)) from None
    elif model or base_url or api_key_env:
        raise click.UsageError("--model, --base-url and --api-key-env are for --proposer llm")
    limits = {k: v for k, v in {"max_processes": max_processes, "disk_quota_gb": disk_quota_gb,
                                 "max_memory_gb": max_memory_gb}.items() if v is not None}
    overrides = {"command": run_command, "metric": metric, "metric_pattern": metric_pattern, "direction": direction,
                 "timeout_seconds": timeout, "budget_seconds": budget, "cpu_budget_seconds": budget,
                 "budget_tokens": budget_tokens}
    config = RunConfig(target=target or str(default_target()), run_dir=run_dir, resume=bool(resume_dir),
                       address=address, proposer=proposer, proposer_options=options, proposers=proposers,
                       max_cost=max_cost, max_skipped_in_a_row=max_unusable_in_a_row, trainers=trainers,
                       gpus_per_trainer=gpus_per_trainer, cpus_per_trainer=cpus_per_trainer, queue_depth=queue_depth,
                       max_experiments=max_experiments, time_limit=parse_duration(time_limit), budget_seconds=budget,
                       seed=seed, keep_files=keep_files, target_overrides=overrides, acceptance=acceptance,
                       baseline_repeats=baseline_repeats, confirm_runs=confirm_runs, max_confirm_runs=max_confirm_runs, k=k, k_confirm=k_confirm, sanity_gain=sanity_gain,
                       sandbox=sandbox, sandbox_limits=limits, ladder=ladder, promote_fraction=promote_fraction,
                       rescreen=rescreen, prune=prune, prune_at=_fractions("--prune-at", prune_at),
                       prune_margin=prune_margin, cost_counts=counts, max_gpu_hours=max_gpu_hours,
                       gpu_prices=gpu_prices, cpu_price=cpu_price,
                       notify=tuple(notify), notify_interval=parse_duration(notify_interval),
                       notify_failures=notify_failures, track=tuple(track), track_flush=parse_duration(track_flush))
    console = Console()
    if stored.get("config"):
        ctx = click.get_current_context()
        given = {p for p in ctx.params if ctx.get_parameter_source(p) not in (ParameterSource.DEFAULT, None)}
        config = config.resumed(stored["config"], given)
        flags = sorted(p.opts[0] for p in ctx.command.params if p.name in given - {"resume_dir"})
        console.print("resuming with the settings the run was started with"
                      + (f"; changed now: {', '.join(flags)}" if flags else "")
                      + (" (--time-limit counts from now)" if config.time_limit else ""), soft_wrap=True)
    from ar_ray.cli.preflight import preflight
    try:
        config.check()  # the flags first (a bad --budget is a flag's mistake, not the target's), then the target
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    preflight(config.target, config.target_overrides, config.proposer)  # before Ray: the contract, the proposer
    try:
        check_run_dir(config)  # a folder holding another run's ledger, a --resume of no run: before "run dir:"
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    console.print(f"run dir: {socket.gethostname()}:{Path(run_dir).resolve()}", soft_wrap=True)  # where it is, seen from a job's logs too
    from ar_ray.cli.stop_status import StopSignal
    try:
        with StopSignal() as stop, Progress(Path(run_dir), console) as progress:
            result = execute(config, on_event=progress)
    except USER_ERRORS + (SetupError,) as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:  # Ctrl-C before the loop began (Ray starting): no summary to print
        click.echo("ar-ray run: stopped before the run began", err=True)
        raise SystemExit(130) from None
    print_summary(console, result)
    if code := stop.exit_code(result["interrupted"]):  # 130 Ctrl-C, 143 SIGTERM: a stopped run is not a finished one
        raise SystemExit(code)


def _stored_run(run_dir: str) -> dict:
    """run.json of a run dir ({} when there is none: `execute` then says what is wrong)."""
    path = Path(run_dir) / "run.json"
    if not path.exists():
        return {}
    try:
        stored = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise click.ClickException(f"{path} is not valid JSON ({e}); it was written by `ar-ray run` and edited since. "
                                   "Restore it, or start a new run") from None
    if not isinstance(stored, dict) or not isinstance(stored.get("config", {}), dict):
        raise click.ClickException(f"{path} does not hold a run's settings; start a new run")
    return stored


def print_summary(console: Console, s: dict) -> None:
    head = "interrupted" if s["interrupted"] else "finished"
    console.print(f"\n[bold]{head}[/bold] after {fmt_seconds(s['elapsed_seconds'])}: {s['experiments']} experiments, "
                  f"{s['kept']} kept, {s['failed']} failed, " + (f"{s['pruned']} pruned, " if s.get('pruned') else "")
                  + f"{s['skipped']} skipped, {s['infra']} infrastructure retries")
    console.print(f"best {s['metric']}: [bold green]{fmt_metric(s['best_metric'])}[/bold green] "
                  f"({best_label(s['best_experiment'], s['best_version'])})")
    if s.get("transfer"):
        console.print(s["transfer"]["text"])
    if s.get("cost_usd"):
        per = f", ${s['cost_per_kept']:.4f} per kept improvement" if s.get("cost_per_kept") else ""
        console.print(f"proposer spend: ${s['cost_usd']:.4f}{per}")
    if s.get("total_cost_usd") is not None:
        from ar_ray.lab.spend import describe
        console.print(describe(s, s["metric"]) + " (priced by --gpu-price / --cpu-price, or estimates)", soft_wrap=True)
    if s.get("stopped_because"):
        console.print(f"stopped: {s['stopped_because']}", soft_wrap=True)
    for w in s.get("alerts") or []:
        console.print(f"alerts to {w['url']}: {w['sent']} sent, {w['failed']} not delivered"
                      + (f" (last error: {w['last_error']})" if w["last_error"] else ""), soft_wrap=True)
    if s.get("trackers"):
        from ar_ray.lab.track import describe as tracker_line
        for t in s["trackers"]:
            left = f"; `ar-ray export {t.get('run_dir', 'RUN_DIR')} --to {t['name']}` logs the rest" if t["behind"] else ""
            console.print(tracker_line(t) + left, soft_wrap=True)
    if s["by_status"]:
        console.print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(s["by_status"].items())))


def _load(run_dir: str, columns: list[str] | None = None):
    try:
        return ledger_mod.load(run_dir, columns)
    except ledger_mod.LedgerError as e:
        raise click.ClickException(str(e)) from None


# what `ar-ray ledger` and `ar-ray status` read of the ledger: not its diffs (2 GB of text at 1M rows)
LEDGER_TABLE_COLUMNS = ["experiment_id", "status", "decision", "metric", "base_version", "best_version", "proposer",
                        "run_seconds", "description", "error"]
ENDPOINT_COLUMNS = ["experiment_id", "group_id", "proposer", "status", "decision", "cost_usd"]


@main.command("ledger")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True, help="Show the last N rows (0: all).")
@click.option("--status", "status_filter", type=click.Choice(STATUSES), default=None, help="Only rows with this status.")
def ledger_cmd(run_dir, limit, status_filter):
    """A table of the experiments in a run."""
    df = _load(run_dir, LEDGER_TABLE_COLUMNS)
    if status_filter:
        df = df[df["status"] == status_filter]
    if limit:
        df = df.tail(limit)
    table = Table(box=None, header_style="bold")
    for col in ("id", "status", "decision", "metric", "base", "best", "proposer", "run s", "description"):
        table.add_column(col, justify="right" if col in ("metric", "base", "best", "run s") else "left")
    for r in df.itertuples():
        style = "bold green" if r.decision == "keep" else ("dim" if r.decision == "skip" else None)
        table.add_row(r.experiment_id, str(r.status), str(r.decision), fmt_metric(None if r.metric != r.metric else r.metric),
                      str(r.base_version), str(r.best_version), str(r.proposer),
                      "-" if r.run_seconds != r.run_seconds else f"{r.run_seconds:.1f}",
                      (r.description or r.error or "")[:80].replace("\n", " "), style=style)
    from ar_ray.cli.console_width import table_console
    table_console().print(table)  # to a file or pipe: one line per row, not rich's 80 columns


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--watch", is_flag=True, help="Refresh every second until the run ends.")
def status(run_dir, watch):
    """The state of a live or finished run."""
    from ar_ray.ledger.analysis import sweep_note
    path = Path(run_dir) / STATUS_FILE
    console = Console()
    if sweep_note(run_dir):
        raise click.ClickException(sweep_note(run_dir))
    try:
        _show_status(run_dir, path, console, watch)
    except KeyboardInterrupt:  # Ctrl-C of --watch: quietly, with a stopped command's status (not click's "Aborted!")
        raise SystemExit(130) from None


def _show_status(run_dir: str, path: Path, console: Console, watch: bool) -> None:
    while True:
        if not path.exists():
            raise click.ClickException(f"{run_dir} has no {STATUS_FILE}: not a run dir, or the run has not started yet")
        snap = json.loads(path.read_text())
        state = snap["state"]
        if state == "running" and time.time() - snap["updated_at"] > 60:
            state = "not responding (driver gone? resume with `ar-ray run --resume RUN_DIR`)"
        console.print(f"state: {state}")
        console.print(render(snap))
        console.print(f"throughput: {snap['throughput_per_hour']:.1f} runs/hour; "
                      + ", ".join(f"{k} {v}" for k, v in sorted(snap["by_status"].items())))
        try:  # what each LLM endpoint's proposals earned (runs with several endpoints)
            from proposers.figures import endpoint_figures
            for line in endpoint_figures(ledger_mod.load(run_dir, ENDPOINT_COLUMNS)):
                console.print(line, soft_wrap=True)
        except ledger_mod.LedgerError:
            pass
        transfer = Path(run_dir) / "transfer.json"
        if transfer.exists():
            console.print(json.loads(transfer.read_text())["text"])
        from ar_ray.lab.track import describe as tracker_line, stored_status
        for t in stored_status(run_dir):  # how far behind each --track tracker is
            console.print(tracker_line(t), soft_wrap=True)
        if not watch or snap["state"] != "running":
            return
        time.sleep(1)


from ar_ray.cli.readers import best, export_git_cmd, report, show  # noqa: E402  (after main: cli_report does not import cli)
from ar_ray.cli.sweep_cmd import sweep  # noqa: E402
from ar_ray.cli.check_cmd import check  # noqa: E402
from ar_ray.cli.init_cmd import init  # noqa: E402
from ar_ray.cli.track_cmd import export  # noqa: E402

main.add_command(best)
main.add_command(report)
main.add_command(show)
main.add_command(export_git_cmd)
main.add_command(sweep)
main.add_command(check)
main.add_command(init)
main.add_command(export)


if __name__ == "__main__":
    main()
