"""Benchmark: `ledger.load` and `ar-ray report` on a big synthetic ledger. (Not a test.)

Writes a synthetic confirm-mode run (`ar_ray.search.synthetic.synthetic_run`: proposals, crashes, skips,
confirmations, keeps, repeats of the best) of --rows rows, with diffs of about 2 KB and a 600-line
train.py stored on kept and baseline rows, then times, each --repeat times (the median is reported):
  load      ar_ray.ledger.load(run_dir): Parquet parts -> pandas with categoricals and dicts
  analysis  summary + lineage + per-proposer/model/GPU stats + throughput on the loaded frame
  plot      the progress PNG (every point drawn, rasterized)
  html      the page (the table limited to the last --max-rows rows and the kept ones)
  report    report.build(run_dir) end to end (load included), as `ar-ray report` runs it
and, for reference, polars and duckdb reading the same ledger. Wall and CPU time of this process are
both printed: on a shared machine the CPU time is the steadier figure.

    python bench/report_bench.py --rows 100000 [--repeat 3] [--run-dir DIR (kept)] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ar_ray.cli import report
from ar_ray.ledger import analysis as A
from ar_ray.ledger import load
from ar_ray.search.synthetic import synthetic_run

CPU: dict[str, float] = {}  # name -> median CPU seconds of this process (less sensitive to a busy machine)


def timed(fn, repeat: int, name: str | None = None) -> tuple[float, object]:
    times, cpu, out = [], [], None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    if name:
        CPU[name] = statistics.median(cpu)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-rows", type=int, default=report.MAX_ROWS)
    ap.add_argument("--diff-lines", type=int, default=30, help="filler lines per diff (30: ~2 KB diffs)")
    ap.add_argument("--file-lines", type=int, default=600, help="filler lines in train.py")
    ap.add_argument("--run-dir", default=None, help="write the synthetic run here and keep it (default: a temp dir)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    tmp = None
    if args.run_dir:
        run_dir = Path(args.run_dir)
    else:
        tmp = tempfile.mkdtemp(prefix="ar-ray-report-bench-")
        run_dir = Path(tmp) / "run"
    try:
        t = time.perf_counter()
        if not (run_dir / "ledger").is_dir():
            synthetic_run(run_dir, n=args.rows, pad_file_lines=args.file_lines, pad_diff_lines=args.diff_lines)
        generate = time.perf_counter() - t
        disk = sum(p.stat().st_size for p in (run_dir / "ledger").glob("*.parquet"))
        parts = len(list((run_dir / "ledger").glob("*.parquet")))

        load_s, df = timed(lambda: load(run_dir), args.repeat, "load")
        info = A.run_info(run_dir, df)

        def analysis():
            A.summary(df, info), A.lineage(df), A.proposer_stats(df), A.model_stats(df), A.gpu_stats(df)
            return A.throughput(df, "1h")

        analysis_s, _ = timed(analysis, args.repeat, "analysis")
        plot_s, png = timed(lambda: report.progress_png(df, info), args.repeat, "plot")
        html_s, (page, s) = timed(lambda: report.render_html(df, info, png, max_rows=args.max_rows), args.repeat, "html")
        out = Path(tmp or run_dir) / "report-out"
        report_s, r = timed(lambda: report.build(run_dir, out, max_rows=args.max_rows), args.repeat, "report")

        extra = {}
        try:
            import polars as pl
            extra["polars_read_s"], _ = timed(lambda: pl.read_parquet(str(run_dir / "ledger" / "*.parquet")), args.repeat)
        except ImportError:
            pass
        try:
            import duckdb
            q = f"select proposer, count(*), avg((status <> 'ok')::int) from '{run_dir}/ledger/*.parquet' group by all"
            extra["duckdb_group_by_s"], _ = timed(lambda: duckdb.sql(q).fetchall(), args.repeat)
        except ImportError:
            pass

        result = {
            "rows": len(df), "kept": s["kept"], "experiments": s["experiments"], "parquet_bytes": disk, "parts": parts,
            "generate_s": generate, "load_s": load_s, "analysis_s": analysis_s, "plot_s": plot_s, "html_s": html_s,
            "report_s": report_s, "cpu_s": dict(CPU), "png_bytes": r.png.stat().st_size, "html_bytes": r.html.stat().st_size, **extra,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "load_avg_1m": os.getloadavg()[0], "repeat": args.repeat,
        }
        print(f"{result['rows']:,} rows ({result['kept']} kept, {parts} parts, {disk / 1e6:.1f} MB Parquet); "
              f"generated in {generate:.1f} s")
        print(f"  {'':<16} {'wall':>7}   {'CPU':>7}   (median of {args.repeat})")
        for k in ("load_s", "analysis_s", "plot_s", "html_s", "report_s", "polars_read_s", "duckdb_group_by_s"):
            if k in result:
                cpu = CPU.get(k[:-2])
                print(f"  {k[:-2]:<16} {result[k]:7.3f} s" + (f" {cpu:7.3f} s" if cpu is not None else ""))
        print(f"  report files: PNG {result['png_bytes'] / 1e3:.0f} KB, HTML {result['html_bytes'] / 1e3:.0f} KB; "
              f"1-minute load average {result['load_avg_1m']:.1f}")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
