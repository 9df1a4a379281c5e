"""Benchmark: a real 1,000,000-row ledger, appended the way the driver appends. (Not a test.)

The driver appends the rows of one `ray.wait` round in one `Ledger.append`, with merges in the background
thread (`background=True`, as `ar-ray run` opens it). This appends --rows realistic rows (about 2 KB of
diff each, bench/ledger_append.py's make_row) in batches of 1..2*--batch rows (uniform, mean ~--batch),
from the loop thread, and reports:
- the slowest append, and the longest stall of the loop: a heartbeat thread that wakes every 5 ms records
  the longest gap between its wake-ups (what the GIL or I/O costs a thread that is not appending);
- every merge: its level, rows, seconds, and the process RSS it added at its peak (sampled every 5 ms);
- `load()` of the finished ledger and `read_table()` of it, wall and CPU seconds, and `load(columns=...)`;
  with --ref REV also `load()` of ar_ray/ledger/store.py as of git REV, alternated with today's in one process.
Rows are bench/ledger_append.py's with a 64-point training curve and the time breakdown for each finished run
(--curve-points; 0 gives the rows of the first 1M-row measurement).

    python bench/ledger_million.py --rows 1000000 --batch 32 --no-fsync --dir /tmp/lm --keep [--ref HEAD]
    python bench/ledger_million.py --dir /tmp/lm --load-only --ref HEAD     # the loads again, nothing appended
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from ledger_append import disable_fsync, make_row  # noqa: E402

from ar_ray.ledger import store as lm  # noqa: E402


def with_curve(row: dict, rng: random.Random, points: int) -> dict:
    """A finished run's training curve (a noisy decaying loss at evenly spaced progress) and its time breakdown."""
    if not points or row["status"] != "ok":
        return row
    top, floor = rng.uniform(6.0, 8.0), rng.uniform(0.8, 1.2)
    curve = [{"progress": (k + 1) / points,
              "loss": floor + (top - floor) * math.exp(-4.0 * (k + 1) / points) + rng.gauss(0.0, 0.03)}
             for k in range(points)]
    startup, evaluate, teardown = rng.uniform(5, 40), rng.uniform(2, 10), rng.uniform(0.5, 3)
    return {**row, "curve": curve, "startup_seconds": startup, "train_seconds": 300.0, "eval_seconds": evaluate,
            "teardown_seconds": teardown}


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Probe:
    """The heartbeat (loop-stall) thread and the RSS sampler, with the merges' marks."""

    def __init__(self):
        self.max_gap, self.max_gap_at = 0.0, 0
        self.rows = 0
        self.merges: list[dict] = []
        self._merge: dict | None = None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._beat, daemon=True)

    def _beat(self):
        last = time.perf_counter()
        while not self._stop.is_set():
            time.sleep(0.005)
            now = time.perf_counter()
            gap = now - last - 0.005
            if gap > self.max_gap:
                self.max_gap, self.max_gap_at = gap, self.rows
            m = self._merge
            if m is not None:
                m["peak"] = max(m["peak"], rss())
            last = now

    def wrap(self, led: lm.Ledger):
        inner = led._merge_one

        def merge_one():
            with led._lock:
                window = led._window()
            if window is None:
                return inner()
            m = {"level": window[0].level + 1, "rows": window[-1].last - window[0].first + 1, "base": rss(), "peak": 0}
            m["peak"] = m["base"]
            self._merge = m
            t0 = time.perf_counter()
            try:
                return inner()
            finally:
                m["seconds"] = time.perf_counter() - t0
                self._merge = None
                self.merges.append(m)
        led._merge_one = merge_one

    def start(self):
        self._t.start()

    def stop(self):
        self._stop.set()
        self._t.join()


def ref_store(rev: str):
    """ar_ray/ledger/store.py as of git `rev`, imported as a module of its own (the code before a change)."""
    root = Path(__file__).resolve().parents[1]
    src = subprocess.run(["git", "show", f"{rev}:ar_ray/ledger/store.py"], cwd=root, capture_output=True, text=True,
                         check=True).stdout
    name = f"ledger_store_at_{rev.replace('~', '_').replace('^', '_')}"
    mod = types.ModuleType(name)
    mod.__file__ = f"{rev}:ar_ray/ledger/store.py"
    sys.modules[name] = mod  # (dataclasses look their module up)
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)
    return mod


def timed(fn) -> tuple[float, float, object]:
    gc.collect()
    w0, c0 = time.perf_counter(), time.process_time()
    got = fn()
    return time.perf_counter() - w0, time.process_time() - c0, got


TEXT = ["diff", "files", "extra", "knobs", "curve", "description", "error", "log_path", "edit_hash"]


def measure_loads(run_dir: Path, n: int, ref, rounds: int) -> None:
    """load() and read_table() of the whole ledger, `rounds` times each (alternating with the --ref store's
    load(), whose order flips every round), then load(columns=...) as the CLI's readers ask for it. Wall and
    CPU seconds (CPU: all of this process's threads); min and median."""
    files = list((run_dir / "ledger").glob("*.parquet"))
    has_curve = lm.read_table(run_dir, ["curve"]).column("curve").null_count < n
    print(f"\nloads of {run_dir}: {n:,} rows, {len(files)} parts, {sum(f.stat().st_size for f in files) / 2**20:.0f} MiB, "
          f"curves {'yes' if has_curve else 'no'}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
    slim = [c for c in lm.SCHEMA.names if c not in TEXT]
    # the ref's load() turns each curve point into a Python dict: ~15 GB for 64 points of 1M rows, so with curves
    # it is timed without the curve column (and the curve column alone on the first big part, below)
    ref_cols = [c for c in lm.SCHEMA.names if c != "curve"] if has_curve else None
    kinds = {"load() every column": lambda: lm.load(run_dir), "read_table() every column": lambda: lm.read_table(run_dir)}
    if ref is not None:
        label = f"{ref.__file__.split(':')[0]} load() " + ("without curve" if has_curve else "every column")
        kinds[label] = lambda: ref.load(run_dir, ref_cols)
        if has_curve:
            kinds["load() without curve"] = lambda: lm.load(run_dir, ref_cols)
    kinds["load(columns=) without the text columns"] = lambda: lm.load(run_dir, slim)
    kinds["load(columns=) 5 columns"] = lambda: lm.load(run_dir, ["status", "decision", "metric", "proposer", "ended_at"])
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    order = list(kinds)
    for r in range(rounds):
        for k in (order if r % 2 == 0 else order[::-1]):
            wall, cpu, got = timed(kinds[k])
            assert len(got) == n, (k, len(got))
            del got
            times[k].append((wall, cpu))
    print(f"| ({rounds} rounds, alternated) | wall min | wall median | CPU min |\n|---|---|---|---|")
    for k, ts in times.items():
        walls = sorted(w for w, _ in ts)
        print(f"| {k} | {walls[0]:.2f} s | {walls[len(walls) // 2]:.2f} s | {min(c for _, c in ts):.2f} s |")
    if ref is not None:  # the same values, whichever store read them
        cols = ["seq", "status", "decision", "metric", "extra", "knobs", "files", "ended_at", "group_n", "diff"]
        a, b = ref.load(run_dir, cols), lm.load(run_dir, cols)
        pd.testing.assert_frame_equal(a, b)
        print(f"same values from both stores ({', '.join(cols)})")
        del a, b
    if has_curve and ref is not None:
        big = max(lm._parts(run_dir / "ledger"), key=lambda q: q.last - q.first)
        t = lm._read_part(big.path, ["curve"])
        w_old, _, old = timed(lambda: t.to_pandas())  # what the ref's load() does with it
        w_new, _, new = timed(lambda: t.to_pandas(types_mapper=lm._pandas_type))
        assert all((x is None and y is pd.NA) or list(x) == y for x, y in zip(old["curve"], list(new["curve"])))
        print(f"the curve column of the biggest part ({t.num_rows:,} rows) to pandas: as Python objects (the ref) "
              f"{w_old:.2f} s, Arrow-backed (now) {w_new:.3f} s; same values")
    gc.collect()
    print(f"peak RSS of this process: {int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) / 2**10:.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=16, help="mean rows per append (uniform 1..2*batch-1)")
    ap.add_argument("--no-fsync", action="store_true", help="monkeypatch fsync out (this process only)")
    ap.add_argument("--dir", help="where to build the ledger (default: a temporary folder, removed afterwards)")
    ap.add_argument("--keep", action="store_true", help="keep the ledger folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--curve-points", type=int, default=64,
                    help="training-curve points of each run that finished, as a target with a progress_pattern leaves "
                         "them (the bundled GPT target: 64, pruning.MAX_POINTS); 0: no curve, as before 2026-12-05")
    ap.add_argument("--load-only", action="store_true",
                    help="time the loads of the ledger already in --dir (built earlier with --keep); append nothing")
    ap.add_argument("--ref", metavar="REV",
                    help="also time load() of ar_ray/ledger/store.py as of git REV (e.g. HEAD), alternated with this one")
    ap.add_argument("--rounds", type=int, default=3, help="timed loads of each kind (alternated with --ref)")
    args = ap.parse_args()
    ref = ref_store(args.ref) if args.ref else None
    if args.load_only:
        if not args.dir or not (Path(args.dir) / "run" / "ledger").is_dir():
            ap.error("--load-only needs --dir holding a ledger built with --keep (DIR/run/ledger)")
        run_dir = Path(args.dir) / "run"
        lm.Ledger(run_dir)  # parts of an older schema are upgraded, as `ar-ray run --resume` would
        measure_loads(run_dir, len(lm.read_table(run_dir, ["seq"])), ref, args.rounds)
        return
    if args.no_fsync:
        disable_fsync()
    rng = random.Random(args.seed)
    pool = [with_curve(make_row(i, rng), rng, args.curve_points) for i in range(4096)]  # built once: the driver's rows cost it nothing here
    base = Path(args.dir or tempfile.mkdtemp(prefix="ledger-million-"))
    run_dir = base / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    probe = Probe()
    led = lm.Ledger(run_dir, background=True)
    probe.wrap(led)
    probe.start()
    lat, slowest_at, n, t_start = [], 0, 0, time.perf_counter()
    next_report = 100_000
    while n < args.rows:
        k = min(rng.randint(1, 2 * args.batch - 1), args.rows - n)
        rows = [{**pool[(n + j) % len(pool)], "experiment_id": f"exp-{n + j:08d}"} for j in range(k)]
        t0 = time.perf_counter()
        led.append(rows)
        dt = time.perf_counter() - t0
        if not lat or dt > max(lat):
            slowest_at = n
        lat.append(dt)
        n += k
        probe.rows = n
        if n >= next_report:
            print(f"  {n:,} rows, {time.perf_counter() - t_start:.0f} s, slowest append {max(lat) * 1e3:.0f} ms, "
                  f"longest loop stall {probe.max_gap * 1e3:.0f} ms, merges {len(probe.merges)}", flush=True)
            next_report += 100_000
    append_wall = time.perf_counter() - t_start
    t0 = time.perf_counter()
    led.wait()
    catch_up = time.perf_counter() - t0
    probe.stop()
    lat_sorted = sorted(lat)
    files = list((run_dir / "ledger").glob("*.parquet"))
    print(f"\nledger: {n:,} rows in {len(lat):,} appends (mean batch {n / len(lat):.1f}), fsync "
          f"{'off' if args.no_fsync else 'on'}, {append_wall:.0f} s of appending, merges caught up {catch_up:.1f} s after")
    print(f"parts on disk: {len(files)}, {sum(f.stat().st_size for f in files) / 2**20:.0f} MiB")
    print(f"append: mean {sum(lat) / len(lat) * 1e3:.1f} ms, median {lat_sorted[len(lat) // 2] * 1e3:.1f} ms, "
          f"p99 {lat_sorted[int(0.99 * len(lat))] * 1e3:.1f} ms, max {max(lat) * 1e3:.0f} ms (at {slowest_at:,} rows)")
    print(f"longest stall of the loop thread's heartbeat: {probe.max_gap * 1e3:.0f} ms (at {probe.max_gap_at:,} rows)")
    by_level: dict[int, list[dict]] = {}
    for m in probe.merges:
        by_level.setdefault(m["level"], []).append(m)
    print("| merge level | merges | rows each (max) | seconds (max) | RSS added at peak, MiB (max) |\n|---|---|---|---|---|")
    for level, ms in sorted(by_level.items()):
        print(f"| {level} | {len(ms):,} | {max(m['rows'] for m in ms):,} | {max(m['seconds'] for m in ms):.2f} | "
              f"{max(m['peak'] - m['base'] for m in ms) / 2**20:.0f} |")
    measure_loads(run_dir, n, ref, args.rounds)
    if not args.keep and not args.dir:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
