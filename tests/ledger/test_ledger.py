"""Tests for ar_ray.ledger.store: round-trips, third-party readers, merges, crash leftovers, SIGKILL, concurrent readers."""

import inspect
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ar_ray.ledger.store import PART, SCHEMA, SCHEMA_VERSION, Ledger, LedgerError, load, read_table

T0 = 1_760_000_000.25  # epoch seconds
DIFF = "".join(f"@@ -{i},3 +{i},3 @@\n-LEARNING_RATE = 3e-4\n+LEARNING_RATE = {i}e-4\n" for i in range(40))
TRAIN_PY = "import torch\n" + "x = 1\n" * 200
STATUSES = ["ok", "crash", "timeout", "oom", "ok"]
DECISIONS = ["keep", "discard", "skip", "discard", "discard"]


def make_row(i: int) -> dict:
    """A realistic attempt row; every column kind appears, and nulls where an attempt has no value."""
    ok = STATUSES[i % 5] == "ok"
    return {
        "run_id": "run-20250101", "experiment_id": f"exp-{i:05d}", "parent_id": None if i == 0 else f"exp-{i - 1:05d}",
        "base_version": i // 2, "best_version": i // 2 + i % 2, "proposer": "mutate" if i % 2 else "llm-0",
        "description": f"raise LR to {i}e-4", "diff": DIFF, "edit_hash": f"{i:040x}",
        "lines_added": 40, "lines_removed": 40 - i % 3,
        "status": STATUSES[i % 5], "decision": "baseline" if i == 0 else DECISIONS[i % 5],
        "metric": 1.0 - i / 1000 if ok else None, "best_metric": 0.99,
        "val_bpb": 1.0 - i / 1000 if ok else None, "peak_vram_mb": 10240.5, "mfu_percent": 38.2, "num_steps": 953.0,
        "total_tokens_M": 499.6, "num_params_M": 50.3, "training_seconds": 300.1, "total_seconds": 325.9, "depth": 8.0,
        "extra": {"tok_per_sec": str(1000 + i), "note": "é ünïcode"} if ok else {},
        "seed": i * 7919, "budget_seconds": 300.0, "knobs": {"AR_DEPTH": "8", "AR_BATCH": "32"},
        "trainer": f"trainer-{i % 3}", "node": "10.0.0.1", "gpu_model": "NVIDIA H100 80GB HBM3",
        "proposed_at": T0 + i, "started_at": T0 + i + 0.5, "ended_at": None if not ok else T0 + i + 326.125,
        "queue_seconds": 0.5, "run_seconds": 325.9, "overhead_seconds": 0.75,
        "returncode": 0 if ok else -9, "error": None if ok else "Traceback (most recent call last):\n  ...",
        "log_path": f"logs/exp-{i:05d}.log", "prompt_tokens": 12000 + i, "completion_tokens": 800,
        "cost_usd": 0.0123, "proposer_seconds": 4.5,
        "files": {"train.py": TRAIN_PY} if i == 0 or DECISIONS[i % 5] == "keep" else None,
        "startup_seconds": 2.7 if ok else None, "train_seconds": 300.1, "eval_seconds": 1.6 if ok else None,
        "teardown_seconds": 1.3 if ok else None,
    }


def part_files(run_dir) -> list[Path]:
    return sorted((Path(run_dir) / "ledger").glob("*.parquet"))


def third_party_reads(run_dir) -> dict[str, list]:
    """The seq column (sorted) and experiment ids (in seq order) as pandas, polars and duckdb read them: no project code."""
    d = str(Path(run_dir) / "ledger")
    p = pd.read_parquet(d).sort_values("seq")
    q = pl.read_parquet(d + "/*.parquet").sort("seq")
    n, s, ids = duckdb.sql(f"select count(*), sum(seq), list(experiment_id order by seq) from '{d}/*.parquet'").fetchall()[0]
    dseq = [r[0] for r in duckdb.sql(f"select seq from '{d}/*.parquet' order by seq").fetchall()]
    assert n == len(dseq) and (s or 0) == sum(dseq)
    return {
        "pandas": (list(p["seq"]), list(p["experiment_id"])),
        "polars": (q["seq"].to_list(), q["experiment_id"].to_list()),
        "duckdb": (dseq, list(ids or [])),
    }


def assert_readers_agree(run_dir, n: int) -> None:
    df = load(run_dir)
    want = (list(range(n)), [f"exp-{i:05d}" for i in range(n)])
    assert (list(df["seq"]), list(df["experiment_id"])) == want
    for name, got in third_party_reads(run_dir).items():
        assert got == want, name


# ----------------------------------------------------------------------------------------------- round trip


def test_round_trip_all_column_kinds(tmp_path):
    led = Ledger(tmp_path)
    rows = [make_row(i) for i in range(7)]
    assert led.append(rows[0]) == [0]
    assert led.append(rows[1:5]) == [1, 2, 3, 4]
    assert led.append(rows[5:]) == [5, 6]
    assert len(led) == 7
    df = load(tmp_path)
    assert list(df.columns) == SCHEMA.names
    assert list(df["seq"]) == list(range(7)) and list(df.index) == list(range(7))
    for col in ("proposed_at", "started_at", "ended_at"):
        assert isinstance(df[col].dtype, pd.DatetimeTZDtype) and str(df[col].dt.tz) == "UTC"
    for col in ("status", "decision", "proposer", "trainer", "node", "gpu_model"):
        assert isinstance(df[col].dtype, pd.CategoricalDtype), col
    assert set(df["status"].cat.categories) == {"ok", "crash", "timeout", "oom"}
    for i, row in enumerate(rows):
        got = df.loc[i]
        for col, want in row.items():
            v = got[col]
            if want is None:
                assert v is None or pd.isna(v), (i, col, v)
            elif col in ("proposed_at", "started_at", "ended_at"):
                assert v == pd.Timestamp(want, unit="s", tz="UTC"), (i, col)
                assert v.timestamp() == pytest.approx(want, abs=1e-6)
            elif isinstance(want, float):
                assert v == pytest.approx(want), (i, col)
            else:
                assert v == want, (i, col, v, want)
    assert df.loc[0, "files"] == {"train.py": TRAIN_PY} and df.loc[1, "extra"] == {}
    # the pyarrow view keeps exact types
    t = read_table(tmp_path)
    assert t.schema.equals(SCHEMA) and t.num_rows == 7


def test_timestamps_accept_datetimes_and_ints(tmp_path):
    led = Ledger(tmp_path)
    when = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
    led.append([{"proposed_at": when, "started_at": 1_740_830_400}])
    df = load(tmp_path)
    assert df.loc[0, "proposed_at"] == pd.Timestamp(when)
    assert df.loc[0, "started_at"] == pd.Timestamp("2025-03-01 12:00:00", tz="UTC")


def test_unknown_column_raises_and_writes_nothing(tmp_path):
    led = Ledger(tmp_path)
    led.append(make_row(0))
    with pytest.raises(LedgerError, match="no_such_column"):
        led.append([make_row(1), {**make_row(2), "no_such_column": 1}])
    assert len(led) == 1 and len(part_files(tmp_path)) == 1
    assert led.append(make_row(1)) == [1]
    assert list(load(tmp_path)["seq"]) == [0, 1]


def test_empty_ledger_and_missing_dir(tmp_path):
    with pytest.raises(LedgerError, match="no ledger"):
        load(tmp_path / "nowhere")
    Ledger(tmp_path)
    df = load(tmp_path)
    assert len(df) == 0 and list(df.columns) == SCHEMA.names


def test_reopen_continues_seq_and_empty_append_is_noop(tmp_path):
    led = Ledger(tmp_path, fanout=4)
    for i in range(6):
        led.append(make_row(i))
    before = part_files(tmp_path)
    assert led.append([]) == [] and part_files(tmp_path) == before and len(led) == 6
    led2 = Ledger(tmp_path, fanout=4)
    assert len(led2) == 6 and led2.append([]) == []
    assert led2.append([make_row(6), make_row(7)]) == [6, 7]
    assert len(Ledger(tmp_path, fanout=4)) == 8
    assert_readers_agree(tmp_path, 8)


# ------------------------------------------------------------------------------------- merges + third parties


@pytest.mark.parametrize("fanout,n", [(4, 50), (3, 31), (64, 10)])
def test_merges_keep_parts_few_and_all_readers_agree(tmp_path, fanout, n):
    led = Ledger(tmp_path, fanout=fanout)
    for i in range(n):
        assert led.append(make_row(i)) == [i]
        if i in (0, fanout - 1, fanout, n // 2):
            assert_readers_agree(tmp_path, i + 1)
    assert_readers_agree(tmp_path, n)
    # row-at-a-time appends leave one part per base-`fanout` digit unit of n: level k holds digit k parts
    digits, m = [], n
    while m:
        digits.append(m % fanout)
        m //= fanout
    names = [p.name for p in part_files(tmp_path)]
    assert len(names) == sum(digits), names
    levels = sorted(int(PART.match(x)["level"]) for x in names)
    assert levels == sorted(k for k, d in enumerate(digits) for _ in range(d))
    assert not list((tmp_path / "ledger").glob("_tmp-*"))
    # parts tile 0..n-1 exactly
    ranges = sorted((int(PART.match(x)["first"]), int(PART.match(x)["last"])) for x in names)
    assert ranges[0][0] == 0 and ranges[-1][1] == n - 1
    assert all(b[0] == a[1] + 1 for a, b in zip(ranges, ranges[1:]))
    # reopening a merged ledger changes nothing on disk and continues
    assert len(Ledger(tmp_path, fanout=fanout)) == n and [p.name for p in part_files(tmp_path)] == names


# ---------------------------------------------------------------------------------------- crash leftovers


def test_stray_tmp_file_ignored_by_readers_and_removed_on_open(tmp_path):
    led = Ledger(tmp_path, fanout=4)
    for i in range(5):
        led.append(make_row(i))
    stray = tmp_path / "ledger" / "_tmp-0123456789abcdef"
    stray.write_bytes(b"PAR1 half a part, never renamed")  # not a valid parquet file
    assert_readers_agree(tmp_path, 5)  # pandas skips _-files; the *.parquet globs never match them
    assert len(Ledger(tmp_path, fanout=4)) == 5
    assert not stray.exists()
    assert_readers_agree(tmp_path, 5)


@pytest.mark.parametrize("restore", ["all", "some"])
def test_merge_inputs_left_behind_are_read_once_and_deleted_on_open(tmp_path, restore):
    led = Ledger(tmp_path, fanout=4)
    for i in range(3):
        led.append(make_row(i))
    saved = tmp_path / "saved"
    saved.mkdir()
    for p in part_files(tmp_path):
        shutil.copy2(p, saved / p.name)
    led.append(make_row(3))  # merges 4 L0 parts into one L1 part holding rows 0-3
    assert [p.name for p in part_files(tmp_path)] == ["part-000000000000-000000000003-L1.parquet"]
    # a crash after the merged part was renamed in but before (all) its inputs were deleted
    inputs = sorted(saved.iterdir())
    for p in inputs if restore == "all" else inputs[:2]:
        shutil.copy2(p, tmp_path / "ledger" / p.name)
    df = load(tmp_path)
    assert list(df["seq"]) == [0, 1, 2, 3]
    led2 = Ledger(tmp_path, fanout=4)
    assert len(led2) == 4
    assert [p.name for p in part_files(tmp_path)] == ["part-000000000000-000000000003-L1.parquet"]
    assert_readers_agree(tmp_path, 4)
    led2.append(make_row(4))
    assert_readers_agree(tmp_path, 5)


def test_partial_overlap_is_reported(tmp_path):
    led = Ledger(tmp_path)
    led.append([make_row(0), make_row(1), make_row(2)])
    shutil.copy2(part_files(tmp_path)[0], tmp_path / "ledger" / "part-000000000002-000000000004-L0.parquet")
    with pytest.raises(LedgerError, match="overlap"):
        load(tmp_path)


def test_part_removed_by_hand_is_read_around(tmp_path):
    led = Ledger(tmp_path, fanout=4)
    for i in range(6):
        led.append(make_row(i))
    (tmp_path / "ledger" / "part-000000000004-000000000004-L0.parquet").unlink()
    assert list(load(tmp_path)["seq"]) == [0, 1, 2, 3, 5]  # a gap that stays is not a merge in flight


# ---------------------------------------------------------------------------------- real processes

# The writer child imports nothing but the library (importing this file would pull in pytest, polars, duckdb).
CHILD = "\n".join([
    "import sys",
    "from ar_ray.ledger.store import Ledger",
    *(f"{name} = {globals()[name]!r}" for name in ("T0", "DIFF", "TRAIN_PY", "STATUSES", "DECISIONS")),
    inspect.getsource(make_row),
    "led = Ledger(sys.argv[1], fanout=int(sys.argv[2]), background=sys.argv[3] == 'bg')",
    "i = len(led)",
    "while True:",
    "    [s] = led.append(make_row(i))",
    "    print(s, flush=True)",
    "    i += 1",
])


def _spawn_writer(run_dir, fanout: int, background: bool = False) -> tuple[subprocess.Popen, queue.Queue]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(run_dir), str(fanout), "bg" if background else "fg"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return proc, lines


def _every_part_readable(run_dir) -> None:
    for p in part_files(run_dir):
        assert pq.read_table(p).schema.equals(SCHEMA, check_metadata=False), p.name


@pytest.mark.parametrize("background", [False, True], ids=["inline-merges", "background-merges"])
def test_sigkill_at_random_points_loses_no_acknowledged_row(tmp_path, background):
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    printed: list[int] = []
    leftovers = 0
    for _ in range(5):
        want = rng.randint(5, 40)
        proc, lines = _spawn_writer(tmp_path, fanout=3, background=background)
        got: list[int] = []
        deadline = time.monotonic() + 20
        try:
            while len(got) < want:
                try:
                    line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    pytest.fail(f"writer printed {len(got)}/{want} seqs in 20 s (seed {seed})")
                if line is None:
                    pytest.fail(f"writer exited early: {proc.wait(5)} {proc.stderr.read()} (seed {seed})")
                got.append(int(line))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        while (line := lines.get(timeout=10)) is not None:  # lines printed before the kill landed
            got.append(int(line))
        assert got == list(range(len(printed), len(printed) + len(got))), seed
        printed += got
        led_dir = tmp_path / "ledger"
        on_disk = sum(int(PART.match(p.name)["last"]) - int(PART.match(p.name)["first"]) + 1 for p in part_files(tmp_path))
        leftovers += bool(list(led_dir.glob("_tmp-*"))) or on_disk != len(load(tmp_path))
        # before any cleanup: every part on disk is whole, and load() sees each acknowledged row once
        _every_part_readable(tmp_path)
        seqs = list(load(tmp_path)["seq"])
        assert seqs == list(range(len(seqs))) and len(seqs) >= len(printed), seed
        # ... third-party readers read the raw directory (a row may be doubled until the next open deletes merge inputs)
        for name, (s, _) in third_party_reads(tmp_path).items():
            assert set(s) == set(seqs), (name, seed)
        # the writer appended at most one row past the last it acknowledged
        assert len(seqs) in (len(printed), len(printed) + 1), seed
        printed = seqs  # a row written but not acknowledged is still a row: the next writer continues after it
        Ledger(tmp_path, fanout=3)
        for name, (s, _) in third_party_reads(tmp_path).items():
            assert s == seqs, (name, seed)
    print(f"seed {seed}: {len(printed)} rows, {leftovers} kills left leftovers")


def test_concurrent_reader_never_sees_a_partial_part(tmp_path):
    proc, lines = _spawn_writer(tmp_path, fanout=4)
    reads = last = 0
    deadline = time.monotonic() + 20
    try:
        assert lines.get(timeout=20) is not None  # the ledger exists
        while last < 100 and time.monotonic() < deadline:
            df = load(tmp_path)  # must never fail: a part is visible only once complete
            n = len(df)
            assert list(df["seq"]) == list(range(n)) and n >= last
            assert list(df["experiment_id"]) == [f"exp-{i:05d}" for i in range(n)]
            last, reads = n, reads + 1
            for p in part_files(tmp_path):  # each part a bare reader finds is whole (or already merged away)
                try:
                    t = pq.read_table(p)
                except FileNotFoundError:
                    continue
                m = PART.match(p.name)
                assert t["seq"].to_pylist() == list(range(int(m["first"]), int(m["last"]) + 1))
        assert proc.poll() is None, proc.stderr.read()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert last >= 100, f"writer reached only {last} rows in 20 s"
    assert reads >= 10


# ------------------------------------------------------------------------------------ background merges


def _gated_merges(monkeypatch, fail: bool = False) -> threading.Event:
    """Merged parts (level >= 1) are written only once the returned event is set (or fail, if asked)."""
    import ar_ray.ledger.store as ledger_mod
    gate, real, real_merged = threading.Event(), ledger_mod._write_part, ledger_mod._write_merged

    def gated(name):
        if not name.endswith("-L0.parquet"):
            if fail:
                raise OSError(28, "No space left on device")
            assert gate.wait(30), "the test never opened the gate"

    def write(ledger_dir, table, name):
        gated(name)
        real(ledger_dir, table, name)

    def write_merged(ledger_dir, tables, name):
        gated(name)
        real_merged(ledger_dir, tables, name)
    monkeypatch.setattr(ledger_mod, "_write_part", write)
    monkeypatch.setattr(ledger_mod, "_write_merged", write_merged)
    return gate


def test_background_merges_never_hold_up_an_append(tmp_path, monkeypatch):
    gate = _gated_merges(monkeypatch)
    led = Ledger(tmp_path, fanout=4, background=True)
    for i in range(14):  # the first merge is due after 4 rows and stays stuck until the gate opens
        assert led.append(make_row(i)) == [i]
    assert not gate.is_set() and not led.wait(timeout=0.05)
    assert all(p.name.endswith("-L0.parquet") for p in part_files(tmp_path))
    assert_readers_agree(tmp_path, 14)
    gate.set()
    assert led.wait(timeout=30)
    # caught up, the parts are what inline merges leave: 14 = 3 x 4 + 2, three L1 parts and two L0 parts
    assert sorted(int(PART.match(p.name)["level"]) for p in part_files(tmp_path)) == [0, 0, 1, 1, 1]
    assert_readers_agree(tmp_path, 14)
    assert len(Ledger(tmp_path, fanout=4)) == 14


def test_a_failed_background_merge_is_reported_and_loses_nothing(tmp_path, monkeypatch):
    _gated_merges(monkeypatch, fail=True)
    led = Ledger(tmp_path, fanout=4, background=True)
    for i in range(4):
        led.append(make_row(i))
    led.wait(timeout=30)
    with pytest.raises(LedgerError, match="No space left on device"):
        led.append(make_row(4))
    assert_readers_agree(tmp_path, 4)


def test_parts_of_the_older_schema_are_upgraded_on_open_and_a_newer_one_is_refused(tmp_path):
    led = Ledger(tmp_path)
    led.append([make_row(i) for i in range(3)])
    (old,) = (tmp_path / "ledger").glob("part-*.parquet")
    v1 = SCHEMA.remove(SCHEMA.get_field_index("curve")).with_metadata({"ar_ray_schema_version": "1"})
    pq.write_table(pq.read_table(old).select(v1.names).cast(v1), old)  # as ar-ray wrote it before `curve`
    assert "curve" not in pq.read_schema(old).names
    led = Ledger(tmp_path)  # a resume opens the writer: the part is rewritten with the new column, rows unchanged
    assert pq.read_schema(old).metadata[b"ar_ray_schema_version"] == str(SCHEMA_VERSION).encode()
    assert "curve" in pq.read_schema(old).names and pq.read_schema(old).names == SCHEMA.names
    led.append(make_row(3) | {"curve": [(0.5, 3.25), (1.0, 2.5)]})
    df = load(tmp_path)
    assert list(df.seq) == [0, 1, 2, 3] and df.curve[:3].isna().all()
    assert [tuple(p.values()) for p in df.curve[3]] == [(0.5, 3.25), (1.0, 2.5)]
    assert pl.read_parquet(tmp_path / "ledger" / "*.parquet").height == 4  # plain readers see one schema
    # a ledger written by a newer ar-ray is left alone
    newer = str(SCHEMA_VERSION + 1)
    v3 = pq.read_table(old).schema.with_metadata({"ar_ray_schema_version": newer})
    pq.write_table(pq.read_table(old).cast(v3), old)
    with pytest.raises(LedgerError, match="newer ar-ray"):
        Ledger(tmp_path)
    assert pq.read_schema(old).metadata[b"ar_ray_schema_version"] == newer.encode()


def test_a_ledger_written_before_the_time_breakdown_reads_as_it_is_and_upgrades_on_open(tmp_path):
    """Version-2 parts (no startup/train/eval/teardown_seconds) read with null phases by load() without a writer,
    and a writer that opens the ledger upgrades them to the current schema."""
    led = Ledger(tmp_path)
    led.append([make_row(i) for i in range(3)])
    (old,) = (tmp_path / "ledger").glob("part-*.parquet")
    phases = ["startup_seconds", "train_seconds", "eval_seconds", "teardown_seconds"]
    v2 = pa.schema([f for f in SCHEMA if f.name not in phases], metadata={"ar_ray_schema_version": "2"})
    pq.write_table(pq.read_table(old).select(v2.names).cast(v2), old)
    df = load(tmp_path)  # a reader (ar-ray ledger, report) of an old run: no upgrade, no error
    assert list(df.seq) == [0, 1, 2] and df[phases].isna().all().all() and list(df.columns) == SCHEMA.names
    Ledger(tmp_path).append(make_row(3))
    assert pq.read_schema(old).names == SCHEMA.names
    df = load(tmp_path)
    assert df.train_seconds[:3].isna().all() and df.train_seconds[3] == 300.1
    assert STATUSES[3] != "ok" and pd.isna(df.startup_seconds[3]) and make_row(4)["startup_seconds"] == 2.7


def test_categoricals_are_read_as_dictionaries_and_come_sorted_from_old_and_new_parts_alike(tmp_path):
    """load() reads status, decision, proposer, trainer, node and gpu_model as Parquet dictionaries (never as 1M
    strings) and gives the categoricals astype("category") gave: sorted categories, NaN for a null. Parts of an
    older schema (read through another path) and of this one meet in one column."""
    led = Ledger(tmp_path)
    rows = [make_row(i) for i in range(7)]
    rows[5]["node"] = None
    led.append(rows[:3])  # a part that becomes version 2 below: read without read_dictionary's fast path
    led.append(rows[3:])
    old = min((tmp_path / "ledger").glob("part-*.parquet"))
    v2 = pa.schema([f for f in SCHEMA if f.name != "train_seconds"], metadata={"ar_ray_schema_version": "2"})
    pq.write_table(pq.read_table(old).select(v2.names).cast(v2), old)
    for columns in (None, ["status", "node", "metric"]):
        df = load(tmp_path, columns)
        for col in ("status", "decision", "proposer", "trainer", "node", "gpu_model"):
            if columns is not None and col not in columns:
                assert col not in df
                continue
            want = [r[col] for r in rows]
            assert isinstance(df[col].dtype, pd.CategoricalDtype), col
            assert list(df[col].cat.categories) == sorted({w for w in want if w is not None}), col
            assert [None if pd.isna(v) else v for v in df[col]] == want, col
    assert read_table(tmp_path).schema.field("status").type == pa.string()  # read_table's own types are unchanged


def test_load_of_selected_columns_reads_only_those(tmp_path):
    led = Ledger(tmp_path, fanout=4)
    for i in range(9):  # parts of two levels
        led.append(make_row(i))
    df = load(tmp_path, columns=["status", "metric"])
    assert list(df.columns) == ["seq", "status", "metric"] and list(df.seq) == list(range(9))
    full = load(tmp_path)
    assert df.metric.equals(full.metric) and list(df.status) == list(full.status)
    assert read_table(tmp_path, ["seq"]).num_rows == 9 and load(tmp_path, ["seq"]).shape == (9, 1)


def test_read_table_last_reads_only_the_parts_holding_the_newest_rows(tmp_path, monkeypatch):
    """read_table(last=N): the newest N rows, in order, read from the newest parts only (a resume's memory of a big
    ledger); N past the ledger's size gives every row."""
    import ar_ray.ledger.store as store
    led = Ledger(tmp_path, fanout=4)
    for i in range(23):  # parts of levels 1 and 0: 0-15 in one L2, 16-19 in L1, then 20, 21, 22
        led.append(make_row(i))
    opened = []
    inner = store._read_part
    monkeypatch.setattr(store, "_read_part", lambda path, *a: opened.append(path.name) or inner(path, *a))
    t = read_table(tmp_path, ["seq", "experiment_id"], last=5)
    assert t.column("seq").to_pylist() == [18, 19, 20, 21, 22]
    assert sorted(opened) == sorted(p.name for p in (tmp_path / "ledger").glob("*.parquet")
                                    if int(PART.match(p.name)["first"]) >= 16), opened
    assert read_table(tmp_path, ["seq"], last=100).column("seq").to_pylist() == list(range(23))
    assert read_table(tmp_path, ["seq"], last=0).num_rows == 0


def test_a_merge_streams_its_inputs_into_row_groups_of_bounded_size(tmp_path, monkeypatch):
    """A merged part is written input by input (never one concatenated table of all its rows), in row groups of
    about MERGE_ROW_GROUP rows (gathered whole inputs: at least that many, at most one input more), and reads back the same."""
    import ar_ray.ledger.store as ledger_mod
    monkeypatch.setattr(ledger_mod, "MERGE_ROW_GROUP", 5)
    led = Ledger(tmp_path, fanout=4)
    for i in range(16):  # 16 = 4 x 4: one level-2 part of 16 rows
        led.append([make_row(i)])
    (part,) = part_files(tmp_path)
    f = pq.ParquetFile(part)
    assert part.name.endswith("-L2.parquet") and [f.metadata.row_group(g).num_rows for g in range(f.num_row_groups)] \
        == [8, 8]  # inputs of 4 rows, gathered until a group holds >= 5
    assert list(load(tmp_path).experiment_id) == [make_row(i)["experiment_id"] for i in range(16)]
