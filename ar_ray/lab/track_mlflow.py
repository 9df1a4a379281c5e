"""MLflow: one MLflow experiment per ar-ray run (named `ar-ray/<run id>`), one MLflow run per ar-ray experiment.

Each MLflow run carries the row's parameters (the knobs as `knob/NAME`), its numbers as metrics, the training
curve as the step metric `train/loss` (step = per-mille of the budget), status and decision as tags, the
description with the change as the run's description (`mlflow.note.content`) and the whole diff as the artifact
`diff.patch`. It is marked FINISHED, KILLED (pruned) or FAILED last: a run left RUNNING was cut off half-logged,
and is deleted and logged again. The client is mlflow-skinny's (`pip install mlflow-skinny`; a local sqlite store
needs `pip install mlflow`); it is imported when the tracker first connects, in the tracker's own thread.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ar_ray.lab.track_record import Record

STATUS = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}
TAG = "ar_ray.experiment_id"
BATCH = 900  # MLflow takes at most 1000 metrics per log_batch
NOTE_CHARS = 5000  # a tag holds up to 8000 characters; the whole diff is the artifact


def default_uri(run_dir: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


class MLflowSink:
    name = "mlflow"

    def __init__(self, uri: str, run_dir: Path):
        self.uri, self.run_dir = uri, Path(run_dir)
        self.where = uri
        # our own thread retries with backoff and counts what lags: MLflow's client must not wait minutes per call
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # not on the run's console
        self.client = self.experiment = None

    def open(self, run_id: str) -> dict[str, str]:
        """Connect; the experiments already logged completely (experiment id -> MLflow run id). Half-logged ones
        (left RUNNING by a crash or a lost connection) are deleted, to be logged again."""
        import logging

        from mlflow.tracking import MlflowClient
        if logging.getLogger("mlflow").level == logging.NOTSET:  # its INFO lines (a new sqlite store's
            logging.getLogger("mlflow").setLevel(logging.WARNING)  # migrations) are not the run's console
        client = MlflowClient(tracking_uri=self.uri)
        name = f"ar-ray/{run_id}"
        found = client.get_experiment_by_name(name)
        if found is None:
            local = self.uri.startswith("sqlite:") or self.uri.startswith("file:")
            artifacts = (self.run_dir / "mlartifacts").resolve().as_uri() if local else None
            experiment = client.create_experiment(name, artifact_location=artifacts,
                                                  tags={"ar_ray.run_id": run_id, "ar_ray.run_dir": str(self.run_dir)})
        else:
            experiment = found.experiment_id
        done, token = {}, None
        while True:
            page = client.search_runs([experiment], max_results=1000, page_token=token)
            for run in page:
                eid = run.data.tags.get(TAG)
                if eid is None:
                    continue
                if run.info.status == "RUNNING" or eid in done:
                    client.delete_run(run.info.run_id)
                else:
                    done[eid] = run.info.run_id
            token = page.token
            if not token:
                break
        self.client, self.experiment = client, experiment
        return done

    def log(self, rec: Record) -> str:
        from mlflow.entities import Metric, Param
        c = self.client
        start = int((rec.started_at or time.time()) * 1000)
        end = int((rec.ended_at or rec.started_at or time.time()) * 1000)
        tags = {TAG: rec.experiment_id, "ar_ray.run_id": rec.run_id, "status": rec.status, "decision": rec.decision,
                "mlflow.note.content": rec.note()[:NOTE_CHARS]}
        run = c.create_run(self.experiment, start_time=start, tags=tags, run_name=rec.experiment_id)
        rid = run.info.run_id
        metrics = [Metric(k, v, end, 0) for k, v in rec.metrics.items()]
        metrics += [Metric("train/loss", loss, end, step) for step, loss, _ in rec.curve]
        params = [Param(k, v) for k, v in rec.params.items()]
        c.log_batch(rid, metrics=metrics[:BATCH], params=params[:100])  # at most 1000 entities, 100 params a call
        for i in range(100, len(params), 100):
            c.log_batch(rid, params=params[i:i + 100])
        for i in range(BATCH, len(metrics), BATCH):
            c.log_batch(rid, metrics=metrics[i:i + BATCH])
        if rec.diff:
            c.log_text(rid, rec.diff, "diff.patch")
        c.set_terminated(rid, status=STATUS[rec.outcome], end_time=end)
        return rid

    def close(self) -> None:
        self.client = None
