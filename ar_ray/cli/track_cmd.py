"""`ar-ray export RUN_DIR --to mlflow|wandb|tensorboard`: a finished run's experiments, logged to trackers.

The same follower as `ar-ray run --track` (ar_ray/lab/track.py), fed from the ledger: what a tracker already has
(RUN_DIR/trackers.json) is not logged again, so export also finishes what a run's --track left behind."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from rich.console import Console

from ar_ray.cli.durations import parse_duration
from ar_ray.cli.progress import STATUS_FILE


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--to", "to", multiple=True, required=True, metavar="NAME[=WHERE]",
              help="mlflow[=URI], wandb[=[ENTITY/]PROJECT] or tensorboard[=DIR], as for `ar-ray run --track` (repeatable).")
@click.option("--timeout", default="10m", show_default=True,
              help="Stop trying after this long (a tracker that is down); what is left is said, and a later export "
                   "logs it.")
def export(run_dir, to, timeout):
    """Log every experiment of a run to MLflow, W&B or TensorBoard (only what is not there yet)."""
    from ar_ray.lab import track
    try:
        specs = track.parse(to, "--to")
    except track.TrackError as e:
        raise click.UsageError(str(e)) from None
    seconds = parse_duration(timeout)
    meta_path = Path(run_dir) / "run.json"
    try:
        meta = json.loads(meta_path.read_text())
        run_id = meta["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        raise click.ClickException(f"{run_dir} holds no run (no readable run.json with a run_id); pass the folder "
                                   "given to `ar-ray run --run-dir`") from None
    status = Path(run_dir) / STATUS_FILE
    try:
        snap = json.loads(status.read_text())
        live = snap.get("state") == "running" and time.time() - snap.get("updated_at", 0) < 60
    except (OSError, ValueError):
        live = False
    if live:
        raise click.ClickException(f"{run_dir} is running now; export it when it has ended (a run logs as it goes "
                                   "with --track, which a resume can add: `ar-ray run --resume RUN_DIR --track NAME`)")
    console = Console()
    follower = track.Follower(run_dir, specs, run_id, meta.get("metric") or "metric", say=console.print)
    follower.start()
    states = follower.close(seconds)
    for s in states:
        console.print(f"{track.describe(s)} ({s['sent']} now)", soft_wrap=True)
    left = [s["name"] for s in states if s["behind"]]
    if left:
        raise click.ClickException(f"not everything was logged to {', '.join(left)}; run the export again once it "
                                   "answers (what is logged stays logged)")
