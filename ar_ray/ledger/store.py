"""The ledger: one row per attempt, append-only Parquet parts under `RUN_DIR/ledger/`.

Durability: each append writes a new part to a temporary name, fsyncs it,
renames it into place and fsyncs the directory, so a crash at any moment
leaves every earlier row readable and never a half-written part. Appends cost
the same whatever the ledger's size: small parts are merged in tiers (F parts
of one level become one part of the next), like a log-structured merge tree.

Part names carry the row range they hold, `part-{first}-{last}-L{level}.parquet`,
so plain readers that list the directory get the rows in order. A crash between
writing a merged part and deleting its inputs leaves parts whose ranges overlap:
`Ledger()` and `load()` drop the covered ones, while a plain reader sees those
rows twice until the next `Ledger()` open (or `ar-ray run --resume`) cleans up.

Readers need nothing but pyarrow, pandas, polars or duckdb:
    pd.read_parquet("RUN/ledger")    pl.read_parquet("RUN/ledger/*.parquet")
    duckdb.sql("select * from 'RUN/ledger/*.parquet'")
"""

from __future__ import annotations

import functools
import os
import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 4  # 2: the column `curve`; 3: the time breakdown (startup/train/eval/teardown_seconds); 4: gpu_cost_usd.
# Parts of an older version are upgraded (the new columns null) when a writer opens the ledger; readers read them as they are
RUN_FILE = "run.json"  # beside ledger/: the run's id, target, metric and configuration
FANOUT = 64  # parts of one level merged into one of the next
PART = re.compile(r"^part-(?P<first>\d{12})-(?P<last>\d{12})-L(?P<level>\d+)\.parquet$")

_ts = pa.timestamp("us", tz="UTC")
_str_map = pa.map_(pa.string(), pa.string())
_curve = pa.list_(pa.struct([("progress", pa.float32()), ("loss", pa.float32())]))
# Typed columns for the summary keys every autoresearch-style target prints; the rest go to `extra`.
METRIC_COLUMNS = ("val_bpb", "peak_vram_mb", "mfu_percent", "num_steps", "total_tokens_M", "num_params_M",
                  "training_seconds", "total_seconds", "depth")

SCHEMA = pa.schema([
    ("seq", pa.int64()),  # row number in the ledger, from 0
    ("run_id", pa.string()),
    ("experiment_id", pa.string()),
    ("parent_id", pa.string()),  # experiment whose files this one edited (null: the target as shipped)
    ("base_version", pa.int32()),  # baseline version the proposal was made from
    ("best_version", pa.int32()),  # baseline version when the result was decided (> base_version: stale)
    ("proposer", pa.string()),
    ("description", pa.string()),
    ("diff", pa.string()),
    ("edit_hash", pa.string()),
    ("lines_added", pa.int32()),
    ("lines_removed", pa.int32()),
    ("status", pa.string()),  # ok, crash, timeout, oom, diverged, no_metric, metric_mismatch, tampered, limit, infra, invalid_edit, duplicate, integrity, proposer_error
    ("decision", pa.string()),  # baseline, keep, discard, skip; confirm mode adds screened, promoted, confirming, reject, conflict; sweeps: sweep
    ("role", pa.string()),  # screen (a new candidate), baseline (a run of the best), confirm, rebase, promote, sweep
    ("group_id", pa.string()),  # the candidate a confirmation or rebase run belongs to
    ("noise", pa.float64()),  # run-to-run spread estimate used for the decision
    ("gain", pa.float64()),  # improvement over the best's mean (positive = better)
    ("threshold", pa.float64()),  # the gain needed
    ("group_mean", pa.float64()),  # mean metric of the candidate's runs, when its group concluded
    ("group_n", pa.int32()),
    ("metric", pa.float64()),  # the target's metric (named in the schema metadata)
    ("best_metric", pa.float64()),  # best metric after this row was decided
    *[(name, pa.float64()) for name in METRIC_COLUMNS],
    ("extra", _str_map),  # every other `key: value` of the summary
    ("seed", pa.int64()),
    ("budget_seconds", pa.float64()),
    ("knobs", _str_map),
    ("trainer", pa.string()),
    ("node", pa.string()),
    ("gpu_model", pa.string()),
    ("proposed_at", _ts),
    ("started_at", _ts),
    ("ended_at", _ts),
    ("queue_seconds", pa.float64()),  # proposal ready -> dispatched
    ("run_seconds", pa.float64()),  # the training child's own wall time
    ("overhead_seconds", pa.float64()),  # trainer-side work outside the child
    ("returncode", pa.int32()),
    ("error", pa.string()),
    ("log_path", pa.string()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("cost_usd", pa.float64()),
    ("proposer_seconds", pa.float64()),
    ("files", _str_map),  # full editable files, stored for baseline, kept and unused rows only
    ("curve", _curve),  # (progress 0..1, training loss) read from the log, when the target declares progress_pattern
    # where run_seconds went (trainers/trainer.py `phases`), from the run's log lines and the reaper's clock:
    ("startup_seconds", pa.float64()),  # child start -> its first progress line (null: the target prints none)
    ("train_seconds", pa.float64()),  # first progress line -> highest progress (no progress lines: start -> metric line)
    ("eval_seconds", pa.float64()),  # training done -> the metric line (null: no progress lines, or no metric)
    ("teardown_seconds", pa.float64()),  # the metric line -> the child exited (null: no metric line)
    ("gpu_cost_usd", pa.float64()),  # what the run's trainer time cost (ar_ray/lab/spend.py; null: a ledger before v4)
], metadata={"ar_ray_schema_version": str(SCHEMA_VERSION)})

_TIMESTAMPS = {f.name for f in SCHEMA if f.type == _ts}
_MAPS = {f.name for f in SCHEMA if f.type == _str_map}


class LedgerError(RuntimeError):
    pass


@dataclass(frozen=True)
class _Part:
    level: int
    first: int
    last: int
    path: Path


def _parts(ledger_dir: Path) -> list[_Part]:
    parts = []
    for p in ledger_dir.iterdir():
        m = PART.match(p.name)
        if m:
            parts.append(_Part(int(m["level"]), int(m["first"]), int(m["last"]), p))
    parts.sort(key=lambda q: (q.first, -q.last))
    # a merged part and the inputs it replaced (left behind by a crash): keep the widest
    live, covered_to = [], -1
    for q in parts:
        if q.last <= covered_to:
            continue
        if q.first <= covered_to:
            raise LedgerError(f"ledger parts overlap partially at {q.path.name}; the ledger in {ledger_dir} was changed by hand")
        live.append(q)
        covered_to = q.last
    return live


def _version(path: Path) -> int:
    meta = pq.read_schema(path).metadata or {}
    try:
        return int(meta.get(b"ar_ray_schema_version", b"1"))
    except ValueError:
        raise LedgerError(f"{path} has a damaged schema version {meta[b'ar_ray_schema_version']!r}") from None


def _name(first: int, last: int, level: int) -> str:
    return f"part-{first:012d}-{last:012d}-L{level}.parquet"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_part(ledger_dir: Path, table: pa.Table, name: str) -> None:
    tmp = ledger_dir / f"_tmp-{uuid.uuid4().hex}"
    with open(tmp, "wb") as f:
        # (an appended part is one row group; a part upgraded to a newer schema gets a merge's row groups)
        pq.write_table(table, f, compression="zstd", row_group_size=MERGE_ROW_GROUP)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ledger_dir / name)
    _fsync_dir(ledger_dir)


MERGE_ROW_GROUP = 16384  # rows per row group of a merged part; a merge holds about this many rows, plus one input


def _write_merged(ledger_dir: Path, tables, name: str) -> None:
    """Write a merged part from an iterable of tables (read one at a time), re-chunked into row groups of
    MERGE_ROW_GROUP rows: a merge's memory is bounded by that and one input part, not the part it writes
    (a level-2 merge of 131,072 rows of 2 KB diffs held ~500 MB when it concatenated its inputs)."""
    tmp = ledger_dir / f"_tmp-{uuid.uuid4().hex}"
    with open(tmp, "wb") as f:
        with pq.ParquetWriter(f, SCHEMA, compression="zstd") as w:
            pending, rows = [], 0
            for t in tables:
                pending.append(t)
                rows += t.num_rows
                if rows >= MERGE_ROW_GROUP:
                    w.write_table(pa.concat_tables(pending), row_group_size=rows)
                    pending, rows = [], 0
            if pending:
                w.write_table(pa.concat_tables(pending), row_group_size=max(rows, 1))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ledger_dir / name)
    _fsync_dir(ledger_dir)


def _to_column(name: str, values: list):
    if name in _TIMESTAMPS:
        values = [datetime.fromtimestamp(v, timezone.utc) if isinstance(v, (int, float)) else v for v in values]
    elif name in _MAPS:
        values = [list(v.items()) if isinstance(v, dict) else v for v in values]
    return pa.array(values, type=SCHEMA.field(name).type)


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts keyed by column name; missing keys are null; times as epoch seconds) -> a table of SCHEMA."""
    unknown = set().union(*(r.keys() for r in rows)) - set(SCHEMA.names)
    if unknown:
        raise LedgerError(f"unknown ledger column(s) {sorted(unknown)}")
    return pa.table([_to_column(n, [r.get(n) for r in rows]) for n in SCHEMA.names], schema=SCHEMA)


class Ledger:
    """The writer. One per run: the driver owns it.

    `background=True` (the driver's choice) merges parts in a thread of its own, so an append costs one
    small part's write whatever merge is due: merging 262,144 rows into a level-3 part no longer stalls
    the loop. The merge thread is the only one that replaces parts; appends only add parts at the end, so
    the two meet only under a short lock. `wait()` lets the merges catch up (tests, the end of a run)."""

    def __init__(self, run_dir: str | os.PathLike, fanout: int = FANOUT, background: bool = False):
        self.dir = Path(run_dir) / "ledger"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fanout = fanout
        for tmp in self.dir.glob("_tmp-*"):  # a part that never got renamed into place
            tmp.unlink()
        live = _parts(self.dir)
        live_paths = {q.path for q in live}
        for p in self.dir.glob("part-*.parquet"):  # inputs of a merge that finished
            if p not in live_paths:
                p.unlink()
        for q in live:  # parts of an older schema get the new columns (null), so plain readers see one schema
            version = _version(q.path)
            if version > SCHEMA_VERSION:
                raise LedgerError(f"{q.path} was written by a newer ar-ray (ledger schema {version}, this one "
                                  f"writes {SCHEMA_VERSION}); upgrade ar-ray to add to this ledger")
            if version < SCHEMA_VERSION:
                _write_part(self.dir, pq.read_table(q.path, schema=SCHEMA), q.path.name)
        self._parts = live
        self._recent: dict[Path, pa.Table] = {}  # level-0 parts written by this process, for the next merge
        self.next_seq = live[-1].last + 1 if live else 0
        self._lock = threading.Lock()  # guards _parts and _recent between append() and the merge thread
        self._due = threading.Condition(self._lock)
        self._merging = False
        self._merge_error: BaseException | None = None
        self._merger = threading.Thread(target=self._merge_loop, name="ledger-merge", daemon=True) \
            if background else None
        if self._merger:
            self._merger.start()

    def __len__(self) -> int:
        return self.next_seq

    def append(self, rows: dict | list[dict]) -> list[int]:
        """Write rows durably; returns their seq numbers. Earlier parts are never rewritten in place."""
        rows = [rows] if isinstance(rows, dict) else list(rows)
        if not rows:
            return []
        if self._merge_error is not None:  # e.g. a full disk: say so at once, nothing is lost
            raise LedgerError(f"merging ledger parts failed: {self._merge_error!r}") from self._merge_error
        first = self.next_seq
        seqs = list(range(first, first + len(rows)))
        table = rows_to_table([{**r, "seq": s} for r, s in zip(rows, seqs)])
        name = _name(first, seqs[-1], 0)
        _write_part(self.dir, table, name)
        with self._lock:
            self._parts.append(_Part(0, first, seqs[-1], self.dir / name))
            self._recent[self.dir / name] = table
            self._due.notify()
        self.next_seq = seqs[-1] + 1
        if self._merger is None:
            while self._merge_one():
                pass
        return seqs

    def _window(self) -> list[_Part] | None:
        """The oldest `fanout` consecutive parts of one level, if any (levels never rise towards the end)."""
        for i in range(len(self._parts) - self.fanout + 1):
            window = self._parts[i:i + self.fanout]
            if window[0].level == window[-1].level:
                return window
        return None

    def _merge_one(self) -> bool:
        """Merge one window into a part of the next level; False when none is due."""
        with self._lock:
            window = self._window()
            if window is None:
                return False
            # rows this writer appended are still in memory: only older levels are read back
            tables = [self._recent.get(q.path) for q in window]
        name = _name(window[0].first, window[-1].last, window[0].level + 1)
        _write_merged(self.dir, (t if t is not None else _read_part(q.path) for t, q in zip(tables, window)), name)
        del tables
        with self._lock:
            i = self._parts.index(window[0])
            self._parts[i:i + self.fanout] = [_Part(window[0].level + 1, window[0].first, window[-1].last, self.dir / name)]
            for q in window:
                self._recent.pop(q.path, None)
        for q in window:
            q.path.unlink()
        _fsync_dir(self.dir)
        return True

    def _merge_loop(self) -> None:
        while True:
            with self._lock:
                while self._window() is None:
                    self._merging = False
                    self._due.notify_all()
                    self._due.wait()
                self._merging = True
            try:
                self._merge_one()
            except BaseException as e:  # noqa: BLE001  (reported by the next append; the parts are intact)
                with self._lock:
                    self._merge_error, self._merging = e, False
                    self._due.notify_all()
                return

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no merge is due (background mode); True when caught up."""
        if self._merger is None:
            return True
        with self._lock:
            return self._due.wait_for(lambda: self._merge_error is not None
                                      or (not self._merging and self._window() is None), timeout)

    def read(self) -> pa.Table:
        return read_table(self.dir.parent)


def _read_part(path: Path, columns: list[str] | None = None, categories: tuple[str, ...] = ()) -> pa.Table:
    """One part as a table of SCHEMA (or of `columns`), read with ParquetFile (half the fixed cost of
    pq.read_table's dataset machinery, which counts at hundreds of parts). A part of an older schema lacks the
    newer columns: they are added as nulls (through pq.read_table(schema=SCHEMA) if a column's type differs).
    `categories`: string columns read as dictionary arrays (int32 indices) straight from Parquet's own
    dictionary pages, never decoded into strings (load()'s categoricals: 1M rows' six took ~0.4 s of CPU)."""
    f = pq.ParquetFile(path, read_dictionary=categories or None)
    if f.schema_arrow.equals(_dictionary_schema(categories), check_metadata=False):
        return f.read(columns=columns).replace_schema_metadata(SCHEMA.metadata)
    want = list(columns) if columns is not None else SCHEMA.names
    have = {field.name: field.type for field in pq.read_schema(path)}
    if any(name in have and have[name] != SCHEMA.field(name).type for name in want):
        t = pq.read_table(path, schema=SCHEMA, columns=columns)
    else:
        t = f.read(columns=[name for name in want if name in have])
    fields = [SCHEMA.field(name) for name in want]
    cols = [t.column(fd.name) if fd.name in t.column_names else pa.nulls(t.num_rows, fd.type) for fd in fields]
    cols = [c.dictionary_encode() if fd.name in categories and not pa.types.is_dictionary(c.type) else c
            for c, fd in zip(cols, fields)]
    schema = _dictionary_schema(categories)
    return pa.table(cols, schema=pa.schema([schema.field(n) for n in want], metadata=SCHEMA.metadata))


@functools.cache
def _dictionary_schema(categories: tuple[str, ...]) -> pa.Schema:
    """SCHEMA with `categories` as dictionary<int32, string>, as ParquetFile(read_dictionary=...) reads them."""
    schema = SCHEMA
    for name in categories:
        i = schema.get_field_index(name)
        schema = schema.set(i, schema.field(i).with_type(pa.dictionary(pa.int32(), pa.string())))
    return schema


READERS = min(8, os.cpu_count() or 1)  # parts read at once (pyarrow decodes each part's columns in its own pool)


def _read_parts(parts: list[_Part], columns: list[str] | None, read: dict[str, pa.Table],
                categories: tuple[str, ...] = ()) -> None:
    """Read the parts not in `read` yet into it, the biggest first, READERS at a time: Parquet decoding releases
    the GIL, and a ledger's time goes into a few big merged parts (a 1M-row ledger: 8 parts of 131k rows)."""
    todo = sorted((q for q in parts if q.path.name not in read), key=lambda q: q.first - q.last)
    if len(todo) < 2 or READERS < 2:
        for q in todo:
            read[q.path.name] = _read_part(q.path, columns, categories)
        return
    with ThreadPoolExecutor(min(READERS, len(todo)), thread_name_prefix="ledger-read") as pool:
        futures = {q.path.name: pool.submit(_read_part, q.path, columns, categories) for q in todo}
        try:
            for name, fut in futures.items():
                read[name] = fut.result()
        except FileNotFoundError:  # the parts read by then are kept for the next try; the rest is not started
            for fut in futures.values():
                fut.cancel()
            wait(futures.values())
            read.update({name: fut.result() for name, fut in futures.items()
                         if not fut.cancelled() and fut.exception() is None})
            raise


def read_table(run_dir: str | os.PathLike, columns: list[str] | None = None, *,
               categories: tuple[str, ...] = (), last: int | None = None) -> pa.Table:
    """The whole ledger as one table, in seq order; `columns`: only these (in this order); `categories`: these
    string columns as dictionary arrays (what load() makes categoricals of); `last`: only the newest `last` rows,
    reading only the parts that hold them (a resume's memory of a 1M-row ledger needs 10,000, not every diff)."""
    ledger_dir = Path(run_dir) / "ledger"
    if not ledger_dir.is_dir():
        raise LedgerError(f"{run_dir} holds no ledger (no ledger/ folder); pass the folder given to `ar-ray run --run-dir`")
    # A writer may merge while we read: a listed part can be deleted before we open it, and a listing
    # taken mid-merge can miss both a merged part and its inputs (a gap). List again until one reads whole;
    # a gap seen twice in the same listing is the ledger's own (parts removed by hand), read as it is.
    # Parts never change once named, so what was read survives a retry.
    seen, read = None, {}
    for _ in range(100):
        parts = _parts(ledger_dir)
        names = [q.path.name for q in parts]
        gap = bool(parts) and (parts[0].first != 0 or any(b.first != a.last + 1 for a, b in zip(parts, parts[1:])))
        if gap and names != seen:
            seen = names
            continue
        if last is not None:
            parts = _tail(parts, last)
            names = [q.path.name for q in parts]
        try:
            _read_parts(parts, columns, read, categories)
        except FileNotFoundError:
            seen = None
            continue
        empty = _dictionary_schema(categories).empty_table()
        table = pa.concat_tables([read[n] for n in names]) if parts else empty.select(columns) if columns else empty
        return table if last is None else table.slice(max(0, table.num_rows - last))
    raise LedgerError(f"the ledger in {ledger_dir} kept changing while it was read; try again")


def _tail(parts: list[_Part], rows: int) -> list[_Part]:
    """The newest parts that hold at least `rows` rows (all of them if the ledger is smaller)."""
    held, i = 0, len(parts)
    while i > 0 and held < rows:
        i -= 1
        held += parts[i].last - parts[i].first + 1
    return parts[i:]


def _pandas_type(t: pa.DataType):
    """load()'s types: integer columns keep their type when they hold nulls (pandas' nullable Int32/Int64);
    the curve stays Arrow-backed. Text columns are Arrow-backed already (pandas 3's str); maps become dicts.
    (Compared with ==, not looked up: a curve read from Parquet names its list items 'element', hashes
    differently from _curve, and a missed lookup costs the Python objects this avoids.)"""
    if t == pa.int32():
        return pd.Int32Dtype()
    if t == pa.int64():
        return pd.Int64Dtype()
    if t == _curve:
        return pd.ArrowDtype(t)
    return None


CATEGORIES = ("status", "decision", "proposer", "trainer", "node", "gpu_model")  # load()'s categoricals


def load(run_dir: str | os.PathLike, columns: list[str] | None = None) -> "pd.DataFrame":
    """The ledger as a pandas DataFrame: one row per attempt, in order, with categorical status/decision.
    `extra`, `knobs` and `files` are dicts; `curve` is Arrow-backed (a row's value is a list of
    {"progress", "loss"} dicts, or NA): 64 points of 1M rows as Python objects took over a minute.
    `columns`: read only these (seq is always included): on a big ledger, leaving out the text columns (diff,
    files, curve, extra) is what keeps a load fast (docs/BENCHMARKS.md, bench/ledger_million.py)."""
    if columns is not None and "seq" not in columns:
        columns = ["seq", *columns]
    categories = tuple(c for c in CATEGORIES if columns is None or c in columns)
    df = read_table(run_dir, columns, categories=categories).to_pandas(maps_as_pydicts="strict",
                                                                       types_mapper=_pandas_type)
    for col in categories:  # the categories sorted, as astype("category") gave them (Arrow's come in order of appearance)
        df[col] = df[col].cat.reorder_categories(sorted(df[col].cat.categories))
    return df.set_index("seq", drop=False).rename_axis(None)
