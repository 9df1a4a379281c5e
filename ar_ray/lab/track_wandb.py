"""Weights & Biases: one W&B run per ar-ray experiment, grouped by the ar-ray run (`group` = its run id).

A W&B run's id is `<run id>-<experiment id>`; its config holds the row's parameters, the description and the diff;
its summary the row's numbers; its history the training curve (`train/loss` and `train/progress`, step = per-mille
of the budget); status and decision are tags too. WANDB_MODE=offline writes runs under RUN_DIR/wandb for a later
`wandb sync`; online, the usual W&B login (WANDB_API_KEY) is read by the driver's process only. The client
(`pip install wandb`) is imported when the tracker first logs, in the tracker's own thread.
"""

from __future__ import annotations

import os
from pathlib import Path

from ar_ray.lab.track_record import Record


class WandbSink:
    name = "wandb"

    def __init__(self, project: str | None, run_dir: Path):
        project = project or os.environ.get("WANDB_PROJECT") or "ar-ray"
        self.entity, _, self.project = project.rpartition("/")
        self.run_dir = Path(run_dir)
        mode = os.environ.get("WANDB_MODE", "online")
        self.where = f"{project} ({mode}{', files in ' + str(self.run_dir / 'wandb') if mode == 'offline' else ''})"
        self.wandb = None

    def open(self, run_id: str) -> dict[str, str]:
        import wandb
        self.wandb, self.run_id = wandb, run_id
        return {}

    def log(self, rec: Record) -> str:
        wandb = self.wandb
        settings = wandb.Settings(console="off", silent=True, x_disable_stats=True, save_code=False, disable_git=True)
        config = {**rec.params, "description": rec.description, "diff": rec.diff}
        run = wandb.init(project=self.project, entity=self.entity or None, group=self.run_id, job_type="experiment",
                         name=rec.experiment_id, id=f"{self.run_id}-{rec.experiment_id}", dir=str(self.run_dir),
                         config=config, notes=rec.description[:1000], tags=[rec.status, rec.decision],
                         reinit="create_new", resume="allow", settings=settings)
        try:
            for step, loss, progress in rec.curve:
                run.log({"train/loss": loss, "train/progress": progress}, step=step)
            run.summary.update({**rec.metrics, "status": rec.status, "decision": rec.decision})
            if rec.error:
                run.summary["error"] = rec.error[-2000:]
        finally:
            run.finish(exit_code=0 if rec.outcome != "failed" else 1)
        return run.id

    def close(self) -> None:
        """Stop wandb's service process (wandb-core, a child of the driver) with the tracker, not at the
        process's exit."""
        if self.wandb is not None:
            self.wandb.teardown()
        self.wandb = None
