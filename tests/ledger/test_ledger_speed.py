"""load() of big ledgers: parts read by a pool of threads, the curve Arrow-backed, old parts without the dataset path.

The speed itself is measured by bench/ledger_million.py (docs/BENCHMARKS.md); these tests hold what makes it fast
to what load() gave before: the same values, in seq order, whichever thread read which part."""

import threading

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ar_ray.cli.readers import _curve_text
from ar_ray.ledger import store
from ar_ray.ledger.store import SCHEMA, Ledger, load

T0 = 1_760_000_000.5


def row(i: int) -> dict:
    ok = i % 4 != 3
    return {
        "run_id": "run-speed", "experiment_id": f"e{i:05d}", "parent_id": f"e{i - 1:05d}" if i else None,
        "base_version": i // 3, "best_version": i // 3, "proposer": f"llm-{i % 2}", "description": f"try {i}",
        "diff": f"@@ -1 +1 @@\n-LR = 1\n+LR = {i}\n" * 20, "status": "ok" if ok else "crash",
        "decision": "keep" if i % 5 == 0 else "discard", "metric": 1.0 - i / 1e4 if ok else None,
        "extra": {"tok_per_sec": str(900 + i)} if ok else {}, "knobs": {"AR_DEPTH": str(i % 3)}, "seed": i,
        "files": {"train.py": f"x = {i}\n"} if i % 5 == 0 else None, "group_n": None if i % 2 else 2,
        "started_at": T0 + i, "ended_at": T0 + i + 300.25 if ok else None,
        "curve": [{"progress": k / 8, "loss": 4.0 - k / 4 - i / 1e3} for k in range(1, 9)] if ok else None,
        "startup_seconds": 2.5 if ok else None, "train_seconds": 290.0,
    }


def build(tmp_path, n: int = 70) -> list[dict]:
    """A ledger of parts of several sizes (fanout 4): merged parts of levels 1 and 2, and level-0 tails."""
    led = Ledger(tmp_path, fanout=4)
    rows = [row(i) for i in range(n)]
    i = 0
    for size in [1, 2, 3] * 100:
        if i >= n:
            break
        led.append(rows[i:i + size])
        i += size
    return rows


def same(a, b) -> bool:
    if a is None or a is pd.NA or a is pd.NaT or (isinstance(a, float) and a != a):
        return b is None or b is pd.NA or b is pd.NaT or (isinstance(b, float) and b != b)
    return a == b


def test_parts_read_by_the_pool_give_every_value_in_seq_order(tmp_path, monkeypatch):
    """Several threads read the parts (biggest first), and load() holds exactly what the Parquet files hold,
    in seq order, with the types load() always gave (nullable ints, categoricals, dicts, UTC timestamps)."""
    rows = build(tmp_path)
    levels = [int(store.PART.match(p.name)["level"]) for p in (tmp_path / "ledger").glob("*.parquet")]
    assert len(levels) >= 3 and len(set(levels)) >= 2, levels
    monkeypatch.setattr(store, "READERS", 4)
    threads, inner = set(), store._read_part

    def spy(path, *args):
        threads.add(threading.current_thread().name)
        return inner(path, *args)

    monkeypatch.setattr(store, "_read_part", spy)
    df = load(tmp_path)
    assert len(threads) > 1 and all(t.startswith("ledger-read") for t in threads)
    assert list(df["seq"]) == list(range(len(rows))) and list(df.index) == list(range(len(rows)))
    assert list(df.columns) == SCHEMA.names
    assert isinstance(df["status"].dtype, pd.CategoricalDtype) and df["seed"].dtype == pd.Int64Dtype()
    assert df["group_n"].dtype == pd.Int32Dtype() and str(df["ended_at"].dt.tz) == "UTC"
    # the reference: each file as plain pyarrow + pandas reads it, no project code
    plain = pd.concat([pq.read_table(p).to_pandas(maps_as_pydicts="strict")
                       for p in sorted((tmp_path / "ledger").glob("*.parquet"))], ignore_index=True)
    assert list(plain["seq"]) == list(range(len(rows)))
    for col in SCHEMA.names:
        for i, (want, got) in enumerate(zip(plain[col], df[col])):
            if col == "curve":
                want = None if want is None else [dict(p) for p in want]
            elif col in ("started_at", "ended_at") and want is not None and want is not pd.NaT:
                assert got.timestamp() == pytest.approx(rows[i][col], abs=1e-6)
            assert same(want, got), (col, i, want, got)
    assert df.loc[5, "files"] == {"train.py": "x = 5\n"} and df.loc[3, "extra"] == {} and df.loc[4, "knobs"] == {"AR_DEPTH": "1"}


def test_the_curve_stays_arrow_backed_and_reads_as_points(tmp_path):
    """64 points of 1M rows as Python objects take minutes (docs/BENCHMARKS.md): the curve column is Arrow-backed.
    A row's value is still a list of {"progress", "loss"} points; a run without one reads as NA."""
    rows = build(tmp_path, 20)
    df = load(tmp_path)
    assert isinstance(df["curve"].dtype, pd.ArrowDtype)
    first = df.loc[0, "curve"]
    assert isinstance(first, list) and len(first) == 8 and first[0]["progress"] == 0.125
    assert [p["loss"] for p in first] == pytest.approx([p["loss"] for p in rows[0]["curve"]])
    assert df.loc[3, "curve"] is pd.NA and df["curve"].isna().sum() == sum(r["curve"] is None for r in rows)
    assert _curve_text(df.loc[3, "curve"]) is None  # `ar-ray show` of a run without a curve
    assert _curve_text(first).startswith("training curve (8 points; progress loss): 12% 3.75")
    assert load(tmp_path, ["curve"])["curve"].dtype == df["curve"].dtype


def test_a_part_of_an_older_schema_reads_with_null_new_columns_in_the_order_asked(tmp_path):
    """A part written before the newest columns (no writer has upgraded it yet) reads without pyarrow's dataset
    machinery: the columns it lacks are nulls of their type, asked-for columns in the order asked."""
    build(tmp_path, 9)
    old = max((tmp_path / "ledger").glob("*.parquet"), key=lambda p: p.stat().st_size)
    newest = SCHEMA.names[-1]
    before = pa.schema([f for f in SCHEMA if f.name != newest], metadata={"ar_ray_schema_version": "3"})
    pq.write_table(pq.read_table(old).select(before.names).cast(before), old)
    full = load(tmp_path)
    assert list(full.columns) == SCHEMA.names and full[newest].isna().all() and list(full.seq) == list(range(9))
    got = load(tmp_path, [newest, "status", "metric"])
    assert list(got.columns) == ["seq", newest, "status", "metric"] and got[newest].isna().all()
    assert got["metric"].equals(full["metric"])
    # a column whose type differs from today's goes through pq.read_table(schema=SCHEMA), which casts it
    seed32 = pa.schema([f.with_type(pa.int32()) if f.name == "seed" else f for f in before], metadata=before.metadata)
    pq.write_table(pq.read_table(old).cast(seed32), old)
    again = load(tmp_path, ["seed", newest])
    assert again["seed"].dtype == pd.Int64Dtype() and list(again["seed"]) == list(range(9))


def test_a_part_that_vanishes_mid_read_is_listed_again_and_what_was_read_is_kept(tmp_path, monkeypatch):
    """A writer's merge can delete a listed part before a reader's thread opens it: the read lists the parts again
    and reads only what it lacks (parts never change once named)."""
    rows = build(tmp_path, 40)
    monkeypatch.setattr(store, "READERS", 3)
    names = sorted(p.name for p in (tmp_path / "ledger").glob("*.parquet"))
    victim, reads, inner = names[len(names) // 2], [], store._read_part

    def flaky(path, *args):
        reads.append(path.name)
        if path.name == victim and reads.count(victim) == 1:
            raise FileNotFoundError(path)
        return inner(path, *args)

    monkeypatch.setattr(store, "_read_part", flaky)
    df = load(tmp_path)
    assert list(df.experiment_id) == [r["experiment_id"] for r in rows]
    # the victim twice; every other part once: read before the failure and kept, or not started until the retry
    assert reads.count(victim) == 2 and all(reads.count(n) == 1 for n in names if n != victim), reads


def test_a_part_upgraded_to_the_new_schema_gets_a_merges_row_groups(tmp_path, monkeypatch):
    """A writer that opens a ledger of an older schema rewrites its parts; a big one is written in row groups of
    MERGE_ROW_GROUP rows, as a merge writes it (it was one row group of the whole part), its rows unchanged."""
    led = Ledger(tmp_path)
    led.append([row(i) for i in range(10)])
    (part,) = (tmp_path / "ledger").glob("*.parquet")
    newest = SCHEMA.names[-1]
    before = pa.schema([f for f in SCHEMA if f.name != newest], metadata={"ar_ray_schema_version": "3"})
    pq.write_table(pq.read_table(part).select(before.names).cast(before), part)
    want = load(tmp_path).drop(columns=[newest])
    monkeypatch.setattr(store, "MERGE_ROW_GROUP", 4)
    Ledger(tmp_path)  # the upgrade
    meta = pq.ParquetFile(part).metadata
    assert pq.read_schema(part).names == SCHEMA.names
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [4, 4, 2]
    got = load(tmp_path)
    assert got[newest].isna().all() and got.drop(columns=[newest]).astype(str).equals(want.astype(str))


def test_the_columns_ar_ray_ledger_and_status_read_are_all_they_use(tmp_path):
    """`ar-ray ledger` and `ar-ray status` load only their columns (a 1M-row ledger's diffs are ~2 GB): what they
    compute from them equals what they computed from the whole frame."""
    from click.testing import CliRunner
    from proposers.figures import endpoint_figures

    from ar_ray.cli.main import ENDPOINT_COLUMNS, LEDGER_TABLE_COLUMNS, main
    rows = [row(i) | {"proposer": f"llm-{i % 2}/model-{'ab'[i % 3 % 2]}", "group_id": f"e{i - i % 2:05d}",
                      "role": "screen" if i % 2 == 0 else "confirm", "cost_usd": 0.01 * i} for i in range(12)]
    Ledger(tmp_path).append(rows)
    lines = endpoint_figures(load(tmp_path, ENDPOINT_COLUMNS))
    assert lines and lines == endpoint_figures(load(tmp_path))
    shown = CliRunner().invoke(main, ["ledger", str(tmp_path), "--limit", "0"], catch_exceptions=False)
    assert shown.exit_code == 0 and "e00011" in shown.output and "try 11" in shown.output
    assert set(LEDGER_TABLE_COLUMNS) <= set(SCHEMA.names) and set(ENDPOINT_COLUMNS) <= set(SCHEMA.names)
