"""Benchmark: does `Ledger.append` stay flat as the ledger grows? (Not a test.)

Appends realistic rows (about 2 KB of unified diff each) one at a time and reports append latency per
decade of ledger size, the parts on disk, and `load()` time at the end. Two modes:

  continuous (default): append N rows from empty, timing every append.
      python bench/ledger_append.py --rows 100000 [--no-fsync]
  window: for each decade S (1e3, 1e4, ... up to --rows), lay down the parts that S row-at-a-time
      appends leave (written directly, untimed), then time W further appends one at a time on each
      (interleaved across the sizes in --rounds slices, so a busy machine skews every size alike); also
      time the single append that triggers the deepest cascade near --rows. Reaches 1e6 rows in minutes.
      python bench/ledger_append.py --rows 1000000 --window 4096 [--no-fsync]

--no-fsync monkeypatches fsync out of this process (the library is unchanged) to show the cost of the
ledger's own work apart from the disk's flush latency.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from ar_ray.ledger import store as lm

CODE = [
    "    x = self.attn(self.ln_1(x))", "    return F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))",
    "LEARNING_RATE = {v}e-4", "WEIGHT_DECAY = 0.{d}", "N_LAYER = {d}", "BATCH_SIZE = {b}",
    "        self.c_fc = nn.Linear(n_embd, {b} * n_embd, bias=False)", "    warmup_iters = {b}",
    "        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)", "    optimizer.zero_grad(set_to_none=True)",
    "        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float('-inf'))", "    lr = min_lr + coeff * (lr - min_lr)",
]


def make_diff(rng: random.Random, size: int = 2048) -> str:
    out, line = [], 1
    while sum(map(len, out)) < size:
        line += rng.randint(3, 40)
        old = rng.choice(CODE).format(v=rng.randint(1, 9), d=rng.randint(1, 9), b=rng.choice([16, 32, 64, 128]))
        new = rng.choice(CODE).format(v=rng.randint(1, 9), d=rng.randint(1, 9), b=rng.choice([16, 32, 64, 128]))
        ctx = rng.choice(CODE).format(v=3, d=4, b=32)
        out.append(f"@@ -{line},3 +{line},3 @@\n {ctx}\n-{old}\n+{new}\n {ctx}\n")
    return "".join(out)


def make_row(i: int, rng: random.Random) -> dict:
    t = 1_760_000_000.0 + 330.0 * i
    ok = rng.random() < 0.8
    return {
        "run_id": "run-bench", "experiment_id": f"exp-{i:08d}", "parent_id": f"exp-{max(i - 1, 0):08d}",
        "base_version": i // 10, "best_version": i // 10, "proposer": f"llm-{i % 4}",
        "description": f"tweak learning rate schedule, attempt {i}", "diff": make_diff(rng),
        "edit_hash": f"{rng.getrandbits(160):040x}", "lines_added": rng.randint(1, 20), "lines_removed": rng.randint(1, 20),
        "status": "ok" if ok else "crash", "decision": rng.choice(["keep", "discard", "discard", "discard"]) if ok else "skip",
        "metric": rng.uniform(0.9, 1.1) if ok else None, "best_metric": 0.95,
        **{c: rng.uniform(1, 1000) if ok else None for c in lm.METRIC_COLUMNS},
        "extra": {"tok_per_sec": str(rng.randint(10_000, 99_999)), "grad_norm": f"{rng.random():.4f}"} if ok else {},
        "seed": i, "budget_seconds": 300.0, "knobs": {"AR_DEPTH": "8"},
        "trainer": f"trainer-{i % 8}", "node": f"10.0.0.{i % 8}", "gpu_model": "NVIDIA H100 80GB HBM3",
        "proposed_at": t, "started_at": t + 1.5, "ended_at": t + 326.0,
        "queue_seconds": 1.5, "run_seconds": 320.0, "overhead_seconds": 4.5, "returncode": 0 if ok else 1,
        "error": None if ok else "RuntimeError: CUDA error: an illegal memory access was encountered",
        "log_path": f"logs/exp-{i:08d}.log", "prompt_tokens": 12_000, "completion_tokens": 900,
        "cost_usd": 0.02, "proposer_seconds": rng.uniform(2, 20), "files": None,
    }


def disable_fsync() -> None:
    os.fsync = lambda fd: None  # this process only; ar_ray.ledger.store calls os.fsync
    lm._fsync_dir = lambda path: None


def ms(x: float) -> str:
    return f"{x * 1e3:.2f}" if x < 10 else f"{x * 1e3:.0f}"


def stats_row(label: str, lat: np.ndarray, merges: int) -> str:
    return (f"| {label} | {len(lat):,} | {ms(lat.mean())} | {ms(float(np.median(lat)))} | "
            f"{ms(float(np.percentile(lat, 99)))} | {ms(lat.max())} | {merges:,} |")


HEADER = ("| ledger size (rows) | appends timed | mean ms | median ms | p99 ms | max ms | appends that merged |\n"
          "|---|---|---|---|---|---|---|")


def seed_parts(run_dir: Path, n: int, fanout: int, rng: random.Random, block: pa.Table | None) -> pa.Table:
    """Write the parts `n` row-at-a-time appends from empty leave: digit k of n in base `fanout` parts of level k."""
    d = run_dir / "ledger"
    d.mkdir(parents=True, exist_ok=True)
    digits, m = [], n
    while m:
        digits.append(m % fanout)
        m //= fanout
    blen = fanout ** max(len(digits) - 1, 1)
    if block is None or block.num_rows < min(blen, 4096):
        block = lm.rows_to_table([make_row(i, rng) for i in range(min(blen, 4096))])
    first = 0
    for level in reversed(range(len(digits))):
        for _ in range(digits[level]):
            size = fanout ** level
            t = pa.concat_tables([block] * math.ceil(size / block.num_rows)).slice(0, size).combine_chunks()
            seqs = pa.array(np.arange(first, first + size, dtype=np.int64))
            t = t.set_column(0, "seq", seqs)
            t = t.set_column(2, "experiment_id", pa.array([f"exp-{s:08d}" for s in range(first, first + size)]))
            lm._write_part(d, t, lm._name(first, first + size - 1, level))
            first += size
    return block


def time_appends(led: lm.Ledger, start: int, count: int, rng: random.Random, lat: np.ndarray, merged: np.ndarray) -> None:
    for j in range(count):
        row = make_row(start + j, rng)
        before = len(led._parts)
        t0 = time.perf_counter()
        led.append(row)
        lat[j] = time.perf_counter() - t0
        merged[j] = len(led._parts) <= before


def dir_stats(run_dir: Path) -> tuple[int, float]:
    files = list((run_dir / "ledger").glob("*.parquet"))
    return len(files), sum(f.stat().st_size for f in files) / 2**20


def timed_load(run_dir: Path, tries: int = 2) -> tuple[float, int]:
    best = math.inf
    for _ in range(tries):  # best of `tries`: other processes' load only ever adds time
        t0 = time.perf_counter()
        n = len(lm.load(run_dir))
        best = min(best, time.perf_counter() - t0)
    return best, n


def continuous(args, run_dir: Path, rng: random.Random) -> None:
    n = args.rows
    led = lm.Ledger(run_dir, fanout=args.fanout)
    lat, merged = np.empty(n), np.zeros(n, dtype=bool)
    t0 = time.perf_counter()
    edges = [0] + [10 ** k for k in range(3, 10) if 10 ** k < n] + [n]
    for a, b in zip(edges, edges[1:]):
        time_appends(led, a, b - a, rng, lat[a:b], merged[a:b])
        print(f"  {b:,} rows, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    print(HEADER)
    for a, b in zip(edges, edges[1:]):
        print(stats_row(f"{a:,} – {b:,}", lat[a:b], int(merged[a:b].sum())))
    print(stats_row("**all**", lat, int(merged.sum())))
    parts, mb = dir_stats(run_dir)
    lt, lrows = timed_load(run_dir)
    print(f"\n{n:,} appends in {wall:.0f} s ({n / wall:.0f}/s, time in append {lat.sum():.0f} s); "
          f"{parts} parts on disk, {mb:.0f} MiB; load() of {lrows:,} rows: {lt:.2f} s (best of 2)")


def window(args, base_dir: Path, rng: random.Random) -> None:
    sizes = [10 ** k for k in range(3, 10) if 10 ** k <= args.rows]
    block, leds = None, {}
    for s in sizes:
        t0 = time.perf_counter()
        block = seed_parts(base_dir / f"w{s}", s, args.fanout, rng, block)
        leds[s] = lm.Ledger(base_dir / f"w{s}", fanout=args.fanout)
        assert len(leds[s]) == s
        print(f"  {s:,}: seeded in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    # round-robin over the sizes in slices, so that load from other processes falls on every size alike
    rounds = max(1, min(args.rounds, args.window))
    cuts = [args.window * r // rounds for r in range(rounds + 1)]
    lat = {s: np.empty(args.window) for s in sizes}
    merged = {s: np.zeros(args.window, dtype=bool) for s in sizes}
    for a, b in zip(cuts, cuts[1:]):
        for s in sizes:
            time_appends(leds[s], s + a, b - a, rng, lat[s][a:b], merged[s][a:b])
    print(HEADER)
    for s in sizes:
        print(stats_row(f"{s:,} (+{args.window:,})", lat[s], int(merged[s].sum())), flush=True)
    for s in sizes[:-1]:
        shutil.rmtree(base_dir / f"w{s}")
    last = base_dir / f"w{sizes[-1]}"
    parts, mb = dir_stats(last)
    lt, lrows = timed_load(last)
    # the deepest cascade near --rows: the append that makes the count a multiple of fanout**L merges L levels at once
    levels = max(1, int(math.log(args.rows, args.fanout)))
    unit = args.fanout ** levels
    target = math.ceil(args.rows / unit) * unit
    shutil.rmtree(last)
    run_dir = base_dir / "cascade"
    block = seed_parts(run_dir, target - 1, args.fanout, rng, block)
    led = lm.Ledger(run_dir, fanout=args.fanout)
    before = len(led._parts)
    row = make_row(target - 1, rng)
    t0 = time.perf_counter()
    led.append(row)
    cascade = time.perf_counter() - t0
    print(f"\nAfter the largest window: {parts} parts on disk, {mb:.0f} MiB; load() of {lrows:,} rows: {lt:.2f} s (best of 2).")
    print(f"Deepest cascade near {args.rows:,} rows: the append that made {target:,} rows merged {levels} levels "
          f"({before + 1} parts -> {len(led._parts)}) in {cascade:.1f} s, i.e. {ms(cascade / unit)} ms amortized over "
          f"the {unit:,} appends between two such cascades (not in the windows above).")
    lt, lrows = timed_load(run_dir)
    print(f"load() of {lrows:,} rows: {lt:.2f} s (best of 2)")


def cascade(args, base_dir: Path, rng: random.Random) -> None:
    """The append that triggers the deepest merge cascade near --rows, with merges inline and in the background
    (as `ar-ray run` does): how long the append itself takes (the driver's loop waits that long), and how
    long the background thread takes to catch up."""
    levels = max(1, int(math.log(args.rows, args.fanout)))
    unit = args.fanout ** levels
    target = math.ceil(args.rows / unit) * unit
    block = None
    for background in (False, True):
        run_dir = base_dir / ("background" if background else "inline")
        block = seed_parts(run_dir, target - 1, args.fanout, rng, block)
        led = lm.Ledger(run_dir, fanout=args.fanout, background=background)
        row = make_row(target - 1, rng)
        t0 = time.perf_counter()
        led.append(row)
        took = time.perf_counter() - t0
        nxt = [time.perf_counter()]
        for i in range(20):  # appends right after, while a background cascade runs
            led.append(make_row(target + i, rng))
            nxt.append(time.perf_counter())
        slowest_next = max(b - a for a, b in zip(nxt, nxt[1:]))
        led.wait()
        caught_up = time.perf_counter() - t0
        print(f"{'background' if background else 'inline':10s}: the append making {target:,} rows returned in "
              f"{ms(took)} ms; the next 20 appends took at most {ms(slowest_next)} ms each; merges done after "
              f"{caught_up:.1f} s ({levels} levels, {unit:,} rows into one part)")
        shutil.rmtree(run_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="ledger size to grow to (default 1,000,000)")
    ap.add_argument("--window", type=int, default=0, help="window mode: appends timed at each decade (0: continuous)")
    ap.add_argument("--rounds", type=int, default=8, help="window mode: slices per window, interleaved across sizes")
    ap.add_argument("--fanout", type=int, default=lm.FANOUT)
    ap.add_argument("--no-fsync", action="store_true", help="monkeypatch fsync out (this process only)")
    ap.add_argument("--dir", help="where to build the ledger (default: a temporary folder, removed afterwards)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cascade", action="store_true",
                    help="only time the deepest cascade near --rows, merges inline vs in the background")
    args = ap.parse_args()
    if args.no_fsync:
        disable_fsync()
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="ledger-bench-"))
    print(f"<!-- {platform.node()} {os.cpu_count()} cpus, python {platform.python_version()}, pyarrow {pa.__version__}, "
          f"fanout {args.fanout}, fsync {'off' if args.no_fsync else 'on'}, {time.strftime('%Y-%m-%d')} -->")
    try:
        if args.cascade:
            cascade(args, base, random.Random(args.seed))
        elif args.window:
            window(args, base, random.Random(args.seed))
        else:
            continuous(args, base / "run", random.Random(args.seed))
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
