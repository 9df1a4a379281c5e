"""Trackers: every experiment of a run logged to MLflow, W&B or TensorBoard, from the driver's side only.

`Follower` is the one place that does it. It is fed the ledger's rows as the driver writes them (its
`on_event("row", ...)`) and, when it starts, the rows of the ledger that no tracker has yet (a resume, an
export). Each tracker has a lane: a thread of its own with an unbounded queue, so a tracker that is down or slow
never holds up the research loop; it falls behind, retries the same experiment with a growing pause (1 s to
60 s), and catches up when it answers again. What each tracker logged (experiment id -> the tracker's own id)
is kept in `RUN_DIR/trackers.json`, written atomically, so logging is idempotent by experiment id: a resume or
an export logs only what is missing. The same file says how far behind each tracker is and its last error
(`ar-ray status`). At the end of a run the lanes get a bounded time to finish; what is left is said, and
`ar-ray export RUN_DIR --to NAME` finishes it.

No client library is imported here: a tracker's is imported in its lane, the first time it connects.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ar_ray.lab.track_record import to_record, tracked

STATE_FILE = "trackers.json"
NAMES = ("mlflow", "wandb", "tensorboard")
BACKOFF = (1.0, 60.0)  # first and longest pause between two tries of the same experiment
FLUSH_TRIES = 2  # failed tries of one tracker during the end's flush before it is left behind
SAVE_EVERY = 1.0  # seconds between two writes of trackers.json while logging
_STOP = object()


class TrackError(ValueError):
    """A --track / --to value that cannot work; the message says what to do."""


@dataclass(frozen=True)
class Spec:
    name: str  # mlflow, wandb, tensorboard
    where: str | None = None  # MLflow tracking URI, W&B [entity/]project, TensorBoard folder (None: the default)

    def __str__(self) -> str:
        return self.name + (f"={self.where}" if self.where else "")


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def parse(values, flag: str = "--track") -> tuple[Spec, ...]:
    """'mlflow', 'mlflow=http://host:5000', 'wandb=team/project', 'tensorboard=/shared/tb' -> Specs, checked:
    a known name, each at most once, and its client installed (before Ray starts, not when the first row lands)."""
    specs, seen = [], set()
    for value in values or ():
        name, eq, where = str(value).partition("=")
        name = name.strip().lower()
        if name not in NAMES:
            raise TrackError(f"{flag} {value!r}: unknown tracker {name!r}; use one of {', '.join(NAMES)} "
                             f"(optionally NAME=WHERE: an MLflow tracking URI, a W&B [entity/]project, a folder)")
        if name in seen:
            raise TrackError(f"{flag} {name} is given twice; give each tracker once")
        if eq and not where.strip():
            raise TrackError(f"{flag} {value!r}: nothing after '='; leave out '=' for the default")
        if urlsplit(where.strip()).password:  # run.json, trackers.json and status would keep it in plain text
            raise TrackError(f"{flag} {name}=...: the address holds a password; give it without one and put the "
                             "credentials in the tracker's own environment variables (MLflow: MLFLOW_TRACKING_USERNAME "
                             "and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN)")
        seen.add(name)
        specs.append(Spec(name, where.strip() or None))
        _check_installed(specs[-1], flag)
    return tuple(specs)


def _check_installed(spec: Spec, flag: str) -> None:
    if spec.name == "mlflow":
        if not _has("mlflow"):
            raise TrackError(f"{flag} mlflow needs the MLflow client: `pip install mlflow-skinny` (or `pip install "
                             "mlflow`), or `pip install 'ar-ray[track]'`")
        uri = spec.where or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:"
        if uri.startswith("sqlite:") and not (_has("sqlalchemy") and _has("alembic")):
            raise TrackError(f"{flag} mlflow logs to a local sqlite store ({'the run dir' if uri == 'sqlite:' else uri}),"
                             " which needs `pip install mlflow` (the full package); or point it at a tracking server: "
                             f"{flag} mlflow=http://HOST:5000, or set MLFLOW_TRACKING_URI")
    elif spec.name == "wandb" and not _has("wandb"):
        raise TrackError(f"{flag} wandb needs `pip install wandb`")
    elif spec.name == "tensorboard" and not _has("tensorboard"):
        raise TrackError(f"{flag} tensorboard needs `pip install tensorboard`")


def make_sink(spec: Spec, run_dir: Path):
    run_dir = Path(run_dir).resolve()
    if spec.name == "mlflow":
        from ar_ray.lab.track_mlflow import MLflowSink, default_uri
        return MLflowSink(spec.where or default_uri(run_dir), run_dir)
    if spec.name == "wandb":
        from ar_ray.lab.track_wandb import WandbSink
        return WandbSink(spec.where, run_dir)
    from ar_ray.lab.track_tensorboard import TensorBoardSink
    return TensorBoardSink(spec.where, run_dir)


class State:
    """trackers.json: per tracker, where it logs, what it logged (experiment id -> its id), how far behind it is."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / STATE_FILE
        self.lock = threading.Lock()
        try:
            self.data = json.loads(self.path.read_text())
            if not isinstance(self.data, dict):
                raise ValueError
        except FileNotFoundError:
            self.data = {}
        except (ValueError, UnicodeDecodeError):  # damaged by hand: start over (trackers dedupe what they can)
            self.data = {}
        self.saved_at = 0.0

    def entry(self, name: str, where: str) -> dict:
        with self.lock:
            e = self.data.setdefault(name, {})
            if e.get("where") != where or not isinstance(e.get("logged"), dict):  # another destination: what
                e.clear()  # was logged elsewhere does not count here
                e.update(where=where, logged={})
            for key in ("behind", "last_error", "last_error_at"):  # every key there from the start: a save may
                e.setdefault(key, None)  # serialize the entry while a lane updates its values
            return e

    def save(self, force: bool = False) -> None:
        with self.lock:
            now = time.time()
            if not force and now - self.saved_at < SAVE_EVERY:
                return
            self.saved_at = now
            tmp = self.path.with_name(f".{STATE_FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)


class Lane:
    """One tracker's thread: takes rows off its queue and logs each until it goes in."""

    def __init__(self, sink, state: State, run_id: str, metric: str, say=None):
        self.sink, self.state, self.run_id, self.metric = sink, state, run_id, metric
        self.say = say or (lambda text: None)
        self.queue: queue.Queue = queue.Queue()
        self.entry = state.entry(sink.name, sink.where)
        self.pending: set[str] = set()  # experiment ids queued or being logged
        self.sent = 0  # experiments this lane logged (not counting those the tracker already had)
        self.failures = 0  # failed tries in a row
        self.tries_failed = 0  # failed tries in all
        self.retry_at: float | None = None
        self.opened = False
        self.quit = threading.Event()  # give up now (the end of a run's bounded flush)
        self.thread = threading.Thread(target=self._loop, name=f"track-{sink.name}", daemon=True)

    @property
    def logged(self) -> dict:
        return self.entry["logged"]

    def put(self, row: dict) -> None:
        eid = row["experiment_id"]
        if eid in self.logged or eid in self.pending:
            return
        self.pending.add(eid)
        self.queue.put(row)
        self.entry["behind"] = len(self.pending)

    def behind(self) -> int:
        return len(self.pending)

    def _loop(self) -> None:
        while True:
            try:
                row = self.queue.get(timeout=SAVE_EVERY)
            except queue.Empty:
                self.state.save()
                continue
            if row is _STOP:
                self._close()
                return
            if not self._log(row):
                return

    def _log(self, row: dict) -> bool:
        """Log one row, retrying with a growing pause; False when told to give up."""
        eid = row["experiment_id"]
        while eid not in self.logged:
            try:
                if not self.opened:
                    found = self.sink.open(self.run_id)  # (network: not under the state's lock)
                    with self.state.lock:
                        self.logged.update(found)
                    self.opened = True
                    if eid in self.logged:
                        break
                tracker_id = self.sink.log(to_record(row, self.metric))
            except Exception as e:  # noqa: BLE001  (a tracker's failure is never the run's)
                self.failures += 1
                self.tries_failed += 1
                pause = min(BACKOFF[1], BACKOFF[0] * 2 ** (self.failures - 1))
                self.retry_at = time.time() + pause
                self.entry.update(last_error=_short(e), last_error_at=time.time(), behind=len(self.pending))
                if self.failures == 1:
                    self.say(f"{self.sink.name}: cannot log {eid} ({_short(e)}); the run goes on, {self.sink.name} "
                             "retries and catches up")
                self.state.save()
                end = time.time() + pause
                while time.time() < end:  # the pause, in slices: status sees the backlog grow meanwhile
                    if self.quit.wait(min(SAVE_EVERY, max(0.0, end - time.time()))):
                        return False
                    self.entry["behind"] = len(self.pending)
                    self.state.save()
                continue
            if self.failures:
                self.say(f"{self.sink.name}: logging again after {self.failures} failed tries")
            self.failures, self.retry_at = 0, None
            with self.state.lock:
                self.logged[eid] = tracker_id
            self.sent += 1
            break
        self.pending.discard(eid)
        self.entry["behind"] = len(self.pending)
        self.state.save(force=not self.pending)
        return True

    def _close(self) -> None:
        try:
            self.sink.close()
        except Exception:  # noqa: BLE001
            pass
        self.state.save(force=True)

    def status(self) -> dict:
        e = self.entry
        return {"name": self.sink.name, "where": self.sink.where, "run_dir": str(self.state.path.parent),
                "logged": len(self.logged), "sent": self.sent,
                "behind": self.behind(), "last_error": e.get("last_error") if self.failures else None,
                "retry_in": max(0.0, self.retry_at - time.time()) if self.retry_at else None}


class Follower:
    """The trackers of one run: the driver's on_event handler (rows only), and what export runs."""

    def __init__(self, run_dir, specs: tuple[Spec, ...], run_id: str, metric: str = "metric", say=None):
        self.run_dir = Path(run_dir)
        self.state = State(self.run_dir)
        self.lanes = [Lane(make_sink(s, self.run_dir), self.state, run_id, metric, say) for s in specs]
        self.closed: list[dict] | None = None

    def start(self, catch_up: bool = True) -> "Follower":
        """Start the lanes; with `catch_up`, queue the ledger's rows that a tracker does not have yet."""
        if catch_up and (self.run_dir / "ledger").is_dir():
            from ar_ray.ledger.store import SCHEMA, read_table
            for row in read_table(self.run_dir, [c for c in SCHEMA.names if c != "files"]).to_pylist():
                self.feed(row)
        for lane in self.lanes:
            lane.thread.start()
        return self

    def feed(self, row: dict) -> None:
        """One ledger row (costs a dict copy and a queue put: it runs on the driver's loop)."""
        if not tracked(row):
            return
        row = {k: v for k, v in row.items() if k != "files"}  # the editable files are not logged (the diff is)
        for lane in self.lanes:
            lane.put(row)

    def __call__(self, kind: str, driver, row) -> None:
        if kind == "row" and row is not None:
            self.feed(row)

    def status(self) -> list[dict]:
        return [lane.status() for lane in self.lanes]

    def close(self, timeout: float | None) -> list[dict]:
        """Let the lanes finish for at most `timeout` seconds (None: until done); then each says what is left.
        A tracker that keeps failing is not waited for: after FLUSH_TRIES failed tries during the flush it is
        left behind at once (a tracker that is down is rarely back within seconds; export finishes it)."""
        if self.closed is not None:
            return self.closed
        deadline = None if timeout is None else time.time() + timeout
        for lane in self.lanes:
            lane.queue.put(_STOP)
        failed_before = {id(lane): lane.tries_failed for lane in self.lanes}
        waiting = [lane for lane in self.lanes if lane.thread.is_alive()]
        while waiting and (deadline is None or time.time() < deadline):
            waiting[0].thread.join(0.05)
            waiting = [lane for lane in waiting if lane.thread.is_alive()
                       and (timeout is None or lane.tries_failed - failed_before[id(lane)] < FLUSH_TRIES)]
        for lane in self.lanes:
            lane.quit.set()  # one still trying gives up at its next pause (its thread dies with the process)
            lane.entry.update(behind=lane.behind())
        self.closed = self.status()
        self.state.save(force=True)
        return self.closed


def describe(s: dict) -> str:
    """One line per tracker: 'mlflow: 12 logged, up to date' / 'mlflow: 3 behind, last error ...'."""
    head = f"{s['name']} ({s['where']}): {s['logged']} logged"
    if not s["behind"]:
        return head + ", up to date"
    text = f"{head}, {s['behind']} behind"
    if s.get("last_error"):
        text += f", last error: {s['last_error']}"
    return text


def stored_status(run_dir) -> list[dict]:
    """What trackers.json says (for `ar-ray status`); [] for a run without trackers."""
    path = Path(run_dir) / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [{"name": name, "where": e.get("where", ""), "logged": len(e.get("logged") or {}),
             "behind": e.get("behind") or 0, "last_error": e.get("last_error") if e.get("behind") else None}
            for name, e in sorted(data.items()) if isinstance(e, dict)]


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text[:200]}"
