"""The in-flight journal: what was dispatched and has no ledger row yet.

One small JSON file per running experiment under `RUN_DIR/inflight/`, written
at dispatch and removed once its row is in the ledger. After a driver crash,
`--resume` re-queues these experiments under their own ids, so work that was
in flight is neither lost nor recorded twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class Journal:
    def __init__(self, run_dir: str | os.PathLike):
        self.dir = Path(run_dir) / "inflight"
        self.dir.mkdir(parents=True, exist_ok=True)

    def add(self, experiment_id: str, record: dict) -> None:
        tmp = self.dir / f".{experiment_id}.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.dir / f"{experiment_id}.json")

    def remove(self, experiment_id: str) -> None:
        (self.dir / f"{experiment_id}.json").unlink(missing_ok=True)

    def entries(self) -> list[dict]:
        out = []
        for p in sorted(self.dir.glob("e*.json")):
            try:
                out.append(json.loads(p.read_text()))
            except (OSError, ValueError):
                p.unlink(missing_ok=True)  # torn by a crash mid-write: the experiment is simply proposed anew
        return out
