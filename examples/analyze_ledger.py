"""Analyze a run's ledger with pandas, polars and duckdb.

    python examples/analyze_ledger.py runs/20261126-153958      # a real run
    python examples/analyze_ledger.py                           # a synthetic run in a temp dir

The ledger is plain Parquet (RUN_DIR/ledger/*.parquet, one row per attempt); any of the three reads it.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pandas as pd

from ar_ray.ledger import analysis as A
from ar_ray.ledger import load
from ar_ray.search.synthetic import synthetic_run

pd.set_option("display.width", 160)
pd.set_option("display.max_columns", 12)

if len(sys.argv) > 1:
    run_dir = Path(sys.argv[1])
else:
    run_dir = synthetic_run(Path(tempfile.mkdtemp()) / "run", n=2000)
    print(f"(no run dir given: wrote a synthetic run to {run_dir})\n")
parquet = f"{run_dir}/ledger/*.parquet"

# --- pandas, through ar_ray.ledger.analysis -------------------------------------------------------------
df = load(run_dir)  # categoricals for status/decision/proposer/gpu_model; tz-aware timestamps
info = A.run_info(run_dir, df)  # run.json: metric name and direction
s = A.summary(df, info)
print(f"best {s['metric']} {s['best_metric']:.6f} ({s['best_experiment']}) from {s['baseline_metric']:.6f}; "
      f"{s['experiments']} experiments, {s['kept']} kept, failures {s['failures']}\n")

print("kept improvements on the way to the best:")
print(A.frontier(df, info["direction"])[["node", "time", "metric", "improvement", "proposer", "description"]], "\n")
print("per proposer:")
print(A.proposer_stats(df)[["attempts", "kept", "acceptance_rate", "failure_rate", "cost_usd", "cost_per_kept"]], "\n")
print("per GPU model:")
print(A.gpu_stats(df)[["runs", "mean_run_seconds", "metric_std", "noise"]], "\n")
print("throughput, last 5 hours:")
print(A.throughput(df, "1h").tail(5)[["experiments_per_hour", "runs_per_hour", "kept", "failed"]], "\n")

# plain pandas: how often does a stale proposal (made from an older best) still get kept?
screens = df[df["role"] == "screen"]
stale = screens["best_version"] > screens["base_version"]
print(f"stale proposals: {stale.mean():.1%} of experiments; screened among stale {(screens[stale]['decision'] == 'screened').mean():.1%}, "
      f"among fresh {(screens[~stale]['decision'] == 'screened').mean():.1%}\n")

# --- polars ---------------------------------------------------------------------------------------
try:
    import polars as pl

    runs = pl.read_parquet(parquet)
    print("polars: failure rate and median run time per proposer")
    print(runs.filter(pl.col("role") == "screen")
              .group_by("proposer")
              .agg(pl.len().alias("ran"), (pl.col("status") != "ok").mean().alias("failure_rate"),
                   pl.col("run_seconds").median().alias("median_run_s"))
              .sort("proposer"), "\n")
except ImportError:
    print("(polars not installed: pip install polars)\n")

# --- duckdb ---------------------------------------------------------------------------------------
try:
    import duckdb

    print("duckdb: outcomes by status")
    print(duckdb.sql(f"select status, count(*) n, round(avg(run_seconds), 1) mean_run_s from '{parquet}' "
                     "where decision <> 'skip' group by all order by n desc"))
    print("duckdb: the kept changes")
    print(duckdb.sql(f"select group_id, best_version, round(best_metric, 6) best, ended_at from '{parquet}' "
                     "where decision = 'keep' order by seq"))
except ImportError:
    print("(duckdb not installed: pip install duckdb)")
