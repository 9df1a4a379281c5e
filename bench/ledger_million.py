"""Benchmark: a real 1,000,000-row ledger, appended the way the driver appends. (Not a test.)

The driver appends the rows of one `ray.wait` round in one `Ledger.append`, with merges in the background
thread (`background=True`, as `ar-ray run` opens it). This appends --rows realistic rows (about 2 KB of
diff each, bench/ledger_append.py's make_row) in batches of 1..2*--batch rows (uniform, mean ~--batch),
from the loop thread, and reports:
- the slowest append, and the longest stall of the loop: a heartbeat thread that wakes every 5 ms records
  the longest gap between its wake-ups (what the GIL or I/O costs a thread that is not appending);
- every merge: its level, rows, seconds, and the process RSS it added at its peak (sampled every 5 ms);
- `load()` of the finished ledger (best of 2) and `read_table()` of it.

    python bench/ledger_million.py --rows 1000000 --batch 16 [--no-fsync]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ledger_append import disable_fsync, make_row  # noqa: E402

from ar_ray.ledger import store as lm  # noqa: E402


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=16, help="mean rows per append (uniform 1..2*batch-1)")
    ap.add_argument("--no-fsync", action="store_true", help="monkeypatch fsync out (this process only)")
    ap.add_argument("--dir", help="where to build the ledger (default: a temporary folder, removed afterwards)")
    ap.add_argument("--keep", action="store_true", help="keep the ledger folder")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.no_fsync:
        disable_fsync()
    rng = random.Random(args.seed)
    pool = [make_row(i, rng) for i in range(4096)]  # built once: the driver's rows cost it nothing here
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
    for what, fn in (("read_table()", lambda: lm.read_table(run_dir)), ("load()", lambda: lm.load(run_dir))):
        best = math.inf
        for _ in range(2):
            t0 = time.perf_counter()
            got = fn()
            best = min(best, time.perf_counter() - t0)
            assert len(got) == n
            del got
        print(f"{what} of the {n:,}-row ledger: {best:.2f} s (best of 2)")
    print(f"peak RSS of this process: {int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) / 2**10:.0f} MiB")
    if not args.keep and not args.dir:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
