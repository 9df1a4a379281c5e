"""TensorBoard: one log dir per ar-ray experiment, `RUN_DIR/tensorboard/<experiment id>/` (with an explicit
`--track tensorboard=DIR`: `DIR/<run id>/<experiment id>/`, so several runs share one TensorBoard).

Each holds the row's numbers as scalars at step 0 (`result/<name>`), the training curve as `train/loss`
(step = per-mille of the budget), the description with the change as the text `experiment`, and the parameters
as an HParams session (status and decision among them). Written with TensorBoard's own event writer and protos
(`pip install tensorboard`; no TensorFlow, no torch). An experiment's folder that is not marked logged in
trackers.json was cut off half-written: it is written again from scratch.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from ar_ray.lab.track_record import Record


class TensorBoardSink:
    name = "tensorboard"

    def __init__(self, root: str | None, run_dir: Path):
        self.explicit = root is not None
        self.root = Path(root) if root else Path(run_dir) / "tensorboard"
        self.where = str(self.root)

    def open(self, run_id: str) -> dict[str, str]:
        if self.explicit:
            self.root = self.root / run_id
            self.where = str(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        return {}

    def log(self, rec: Record) -> str:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
        folder = self.root / rec.experiment_id
        if folder.exists():
            shutil.rmtree(folder)
        wall = rec.ended_at or time.time()
        writer = EventFileWriter(str(folder))
        try:
            def emit(step: int, *values) -> None:
                writer.add_event(event_pb2.Event(wall_time=wall, step=step, summary=summary_pb2.Summary(value=values)))
            for key, session in _hparams(rec):
                emit(0, summary_pb2.Summary.Value(tag=key, metadata=session))
            emit(0, _text("experiment", rec.note()))
            for name, v in rec.metrics.items():
                emit(0, summary_pb2.Summary.Value(tag=f"result/{name}", simple_value=v))
            for step, loss, _ in rec.curve:
                emit(step, summary_pb2.Summary.Value(tag="train/loss", simple_value=loss))
        finally:
            writer.close()
        return rec.experiment_id

    def close(self) -> None:
        pass


def _text(tag: str, text: str):
    """A summary value the Text dashboard shows (Markdown)."""
    from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
    meta = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text"))
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[text.encode()],
                                    tensor_shape=tensor_shape_pb2.TensorShapeProto())
    return summary_pb2.Summary.Value(tag=tag, metadata=meta, tensor=tensor)


def _hparams(rec: Record) -> list:
    """The HParams dashboard's session start and end for this experiment (it builds its table from these)."""
    from google.protobuf import struct_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    hparams = {}
    for k, v in rec.params.items():
        try:
            hparams[k] = struct_pb2.Value(number_value=float(v)) if k in ("seed", "budget_seconds") else \
                struct_pb2.Value(string_value=v)
        except ValueError:
            hparams[k] = struct_pb2.Value(string_value=v)
    start = plugin_data_pb2.HParamsPluginData(version=0, session_start_info=plugin_data_pb2.SessionStartInfo(
        hparams=hparams, start_time_secs=rec.started_at or 0.0))
    status = api_pb2.STATUS_FAILURE if rec.outcome == "failed" else api_pb2.STATUS_SUCCESS  # (no 'stopped' there)
    end = plugin_data_pb2.HParamsPluginData(version=0, session_end_info=plugin_data_pb2.SessionEndInfo(
        status=status, end_time_secs=rec.ended_at or 0.0))
    return [(metadata.SESSION_START_INFO_TAG, metadata.create_summary_metadata(start)),
            (metadata.SESSION_END_INFO_TAG, metadata.create_summary_metadata(end))]
