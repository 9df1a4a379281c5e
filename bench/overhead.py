#!/usr/bin/env python
"""Orchestration overhead and duty cycle: ar-ray's driver loop against Ray Tune, same workload.

The workload is a stand-in target: a train.py with a few UPPERCASE hyperparameters
(so the mutate proposer has knobs to turn) that sleeps exactly D seconds, then
prints `---` and `val_bpb: <number>`. Every second outside that sleep is overhead.

    python bench/overhead.py --trainers 2 8 16 --experiments 40 80 160 --duration 2
    python bench/overhead.py --trainers 2 --experiments 6 --duration 60 --skip-tune
    python bench/overhead.py --trainers 4 --experiments 24 --duration 1 --skip-tune --track none tensorboard none tensorboard

For each N the script starts a local Ray with N fake CPUs (the child only sleeps,
so N may exceed the cores), then

1. ar-ray: `execute(RunConfig(trainers=N, cpus_per_trainer=1, max_experiments=M))`
   and, from the ledger,
   (a) trainer-side `overhead_seconds` (the trainer's work outside the child);
   (b) end-to-end: per trainer, busy time not spent in the child
       (ended_at - started_at - run_seconds) plus the idle gaps between consecutive
       experiments (ended_at of one -> started_at of the next), per experiment;
   duty cycle per trainer = sum(run_seconds) / (last ended_at - first started_at).
   Steady state: only runs started after the baseline's result landed. The baseline
   runs side by side with the first proposals, but its landing pays one-off costs
   (first Parquet write, first broadcast, the results held back until the baseline's
   metric was known) that put a ~0.1-0.3 s gap on one trainer; the `all_*` figures
   keep every run.
   Also the whole-run figure computed exactly like Tune's below, from before
   `execute()` to its return (actor start-up and the last wave's tail included).
2. Ray Tune: `tune.Tuner` with a function trainable that runs the same stand-in
   as a subprocess, num_samples=M, max_concurrent_trials=N, 1 CPU per trial;
   per-trial overhead = (wall x N - M x D) / M over `Tuner.fit()`.

The driver runs in this process, so its methods are timed in place (where the
driver's own time goes). Prints a markdown table; --json writes every figure.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAND_IN = '''\
"""Stand-in training script: sleeps a fixed time, then prints an autoresearch-style summary."""
import math
import time

TIME_BUDGET = {duration!r}  # fixed: the run's duration (protected from the proposer by its name)
LEARNING_RATE = 0.04
WEIGHT_DECAY = 0.1
WARMUP_RATIO = 0.05
DROPOUT = 0.1
ADAM_BETA2 = 0.95
DEPTH = 8
BATCH_SIZE = 64
HEAD_DIM = 64
USE_BIAS = False

time.sleep(TIME_BUDGET)
score = 1.0 + 0.01 * sum(math.log(v / o) ** 2 for v, o in (
    (LEARNING_RATE, 0.03), (WEIGHT_DECAY, 0.2), (WARMUP_RATIO, 0.05), (DROPOUT, 0.05), (ADAM_BETA2, 0.95),
    (DEPTH, 10), (BATCH_SIZE, 64), (HEAD_DIM, 64))) + 0.001 * USE_BIAS
print("---")
print(f"val_bpb: {{score:.6f}}")
print(f"training_seconds: {{TIME_BUDGET:.1f}}")
'''


def make_target(root: Path, duration: float) -> Path:
    target = root / "target"
    target.mkdir(parents=True, exist_ok=True)
    (target / "train.py").write_text(STAND_IN.format(duration=float(duration)))
    return target


def start_ray(n: int) -> None:
    import ray
    ray.init(address="local", num_cpus=n, num_gpus=0, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    time.sleep(3)  # let the prestarted worker pool settle: 2 cores are easily saturated


# ---------------------------------------------------------------- ar-ray

class DriverTimer:
    """Wrap Driver / Ledger methods in place to see where the driver's own time goes."""

    NAMES = (("ar_ray.engine.driver", "Driver", "_wait"), ("ar_ray.engine.driver", "Driver", "_landed"),
             ("ar_ray.engine.driver", "Driver", "_dispatch"), ("ar_ray.engine.driver", "Driver", "_top_up"),
             ("ar_ray.engine.driver", "Driver", "_proposed"), ("ar_ray.engine.driver", "Driver", "_broadcast"),
             ("ar_ray.engine.driver", "Driver", "_record"), ("ar_ray.ledger.store", "Ledger", "append"),
             ("ar_ray.lab.track", "Follower", "feed"))  # --track: what the loop pays per row for the trackers

    def __init__(self):
        import importlib
        self.total = collections.Counter()
        self.calls = collections.Counter()
        self.saved = []
        for mod, cls, name in self.NAMES:
            klass = getattr(importlib.import_module(mod), cls)
            orig = getattr(klass, name, None)
            if orig is None:  # the driver changed: time what is there
                continue
            self.saved.append((klass, name, orig))
            setattr(klass, name, self._wrap(f"{cls}.{name}", orig))

    def _wrap(self, key, fn):
        @functools.wraps(fn)
        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.total[key] += time.perf_counter() - t0
                self.calls[key] += 1
        return timed

    def restore(self):
        for klass, name, orig in self.saved:
            setattr(klass, name, orig)


def epoch(series):
    import pandas as pd
    return (series - pd.Timestamp(0, tz="UTC")).dt.total_seconds()


def per_trainer(ran) -> dict:
    """(b) and the duty cycle over the given runs, trainer by trainer."""
    inside, gaps, duty, runs_per, worst = 0.0, 0.0, {}, {}, 0.0
    for name, g in ran.groupby("trainer", observed=True):
        if g.empty:
            continue
        g = g.sort_values("s")
        inside += float((g["e"] - g["s"] - g["run_seconds"]).sum())
        between = g["s"].values[1:] - g["e"].values[:-1]
        gaps += float(between.sum())
        worst = max([worst, *between.tolist()])
        duty[str(name)] = float(g["run_seconds"].sum() / (g["e"].max() - g["s"].min()))
        runs_per[str(name)] = len(g)
    r = max(1, sum(runs_per.values()))
    if not duty:
        return {"runs_counted": 0}
    return {"runs_counted": sum(runs_per.values()), "inside_s": inside / r, "gap_s": gaps / r,
            "gap_max_s": worst, "overhead_b_s": (inside + gaps) / r,
            "duty_min": min(duty.values()), "duty_mean": sum(duty.values()) / len(duty),
            "runs_per_trainer": runs_per}


def run_ar_ray(n: int, m: int, d: float, target: Path, root: Path, proposers: int, sandbox: str = "auto",
               track: str = "none") -> dict:
    from ar_ray.engine.config import RunConfig
    from ar_ray.engine.run import execute
    from ar_ray.ledger.store import load

    run_dir = root / f"ar-ray-N{n}-M{m}-D{d:g}-{sandbox}-{track}-{time.time_ns()}"
    config = RunConfig(target=str(target), run_dir=str(run_dir), proposer="mutate", proposers=proposers,
                       trainers=n, cpus_per_trainer=1, gpus_per_trainer=0, max_experiments=m, budget_seconds=d,
                       sandbox=sandbox, track=() if track == "none" else (track,))
    timer = DriverTimer()
    events = collections.Counter()
    errors: list[str] = []

    def on_event(kind, driver, row):
        if kind in ("proposer_error", "infra"):
            events[kind] += 1
            if len(errors) < 3:
                errors.append(f"{kind}: {row.get('error')}")

    t0 = time.time()
    try:
        summary = execute(config, on_event=on_event)
    finally:
        timer.restore()
    wall = time.time() - t0

    df = load(run_dir)
    ran = df[df["started_at"].notna()].copy()
    ran["s"], ran["e"] = epoch(ran["started_at"]), epoch(ran["ended_at"])
    # steady state: runs dispatched once the baseline's result was in (the first landing pays one-off costs:
    # the first Parquet write, the baseline broadcast, the results held back until the baseline was known)
    baseline_end = ran.loc[ran["decision"] == "baseline", "e"].min()
    if baseline_end != baseline_end:  # NaN: no baseline row (resumed run, or another policy's naming)
        baseline_end = float(ran["e"].min())
    all_runs = per_trainer(ran)
    steady = per_trainer(ran[ran["s"] >= baseline_end])
    r = len(ran)
    return {
        "system": "ar-ray" if track == "none" else f"ar-ray --track {track}", "N": n, "M": m, "D": d, "runs": r,
        "wall_s": wall, "trackers": summary.get("trackers"),
        "driver_elapsed_s": summary["elapsed_seconds"], "startup_and_teardown_s": wall - summary["elapsed_seconds"],
        "status": summary.get("by_status"), "skipped": summary.get("skipped"), "kept": summary.get("kept"),
        "infra": summary.get("infra"), "events": dict(events), "event_errors": errors,
        "overhead_a_s": float(ran["overhead_seconds"].mean()),
        "overhead_a_max_s": float(ran["overhead_seconds"].max()),
        **{f"{k}": v for k, v in steady.items()},
        **{f"all_{k}": v for k, v in all_runs.items()},
        "child_minus_D_s": float(ran["run_seconds"].mean() - d),
        "child_minus_D_median_s": float(ran["run_seconds"].median() - d),
        "wall_overhead_s": (wall * n - r * d) / r,
        "utilization": float(ran["run_seconds"].sum()) / (n * wall),
        "queue_s": float(ran["queue_seconds"].mean()),
        "driver_time_s": {k: round(v, 4) for k, v in timer.total.items()},
        "driver_calls": dict(timer.calls),
    }


# ---------------------------------------------------------------- Ray Tune

def _tune_trial(config):
    from ray import tune
    t0 = time.time()
    c0 = time.monotonic()
    out = subprocess.run([sys.executable, config["train_py"]], capture_output=True, text=True,
                         cwd=os.path.dirname(config["train_py"]), env={**os.environ, "BENCH_LR": str(config["lr"])})
    child = time.monotonic() - c0
    metric = float(re.search(r"^val_bpb:\s*(\S+)", out.stdout, re.MULTILINE).group(1))
    tune.report({"val_bpb": metric, "child_seconds": child, "trial_start": t0, "trial_end": time.time()})


def run_tune(n: int, m: int, d: float, target: Path, root: Path, reuse_actors: bool = False) -> dict:
    from ray import tune
    storage = root / f"tune-N{n}-M{m}-D{d:g}"
    tuner = tune.Tuner(
        tune.with_resources(_tune_trial, {"cpu": 1}),
        param_space={"lr": tune.loguniform(1e-4, 1e-1), "train_py": str(target / "train.py")},
        tune_config=tune.TuneConfig(num_samples=m, max_concurrent_trials=n, metric="val_bpb", mode="min",
                                    reuse_actors=reuse_actors),
        run_config=tune.RunConfig(storage_path=str(storage), name="bench", verbose=0),
    )
    t0 = time.time()
    results = tuner.fit()
    wall = time.time() - t0
    df = results.get_dataframe()
    errors = len(results.errors)
    child = df["child_seconds"]
    inside = df["trial_end"] - df["trial_start"] - child  # trainable's own time outside the child
    return {
        "system": "Ray Tune (reuse_actors)" if reuse_actors else "Ray Tune", "N": n, "M": m, "D": d, "runs": len(df), "wall_s": wall, "errors": errors,
        "overhead_s": (wall * n - m * d) / m,
        "overhead_vs_child_s": (wall * n - float(child.sum())) / m,
        "child_minus_D_s": float(child.mean() - d),
        "child_minus_D_median_s": float(child.median() - d),
        "inside_trainable_s": float(inside.mean()),
        "tune_time_total_s": float(df["time_total_s"].mean()),
        "utilization": float(child.sum()) / (n * wall),
        "first_trial_start_s": float(df["trial_start"].min() - t0),
    }


# ---------------------------------------------------------------- report

def table(results: list[dict]) -> str:
    head = ("| N | M | D (s) | system | wall (s) | overhead / exp (s) | of which in trainer (s) | idle between (s) "
            "| child start-up (s) | whole-run overhead / exp (s) | duty cycle min / mean | utilization | Tune ÷ ar-ray |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    by = collections.defaultdict(dict)
    for r in results:
        by[(r["N"], r["M"], r["D"])][r["system"]] = r
    for key in sorted(by, key=lambda k: (k[2], k[0])):
        a = by[key].get("ar-ray")
        for system, a2 in by[key].items():  # ar-ray with --track: a row of its own
            if system.startswith("ar-ray --track"):
                lines.append(f"| {a2['N']} | {a2['M']} | {a2['D']:g} | {system} | {a2['wall_s']:.1f} "
                             f"| {a2['overhead_b_s']:.4f} | {a2['inside_s']:.4f} | {a2['gap_s']:.4f} "
                             f"| {a2['child_minus_D_median_s']:.3f} | {a2['wall_overhead_s']:.3f} "
                             f"| {a2['duty_min']:.2%} / {a2['duty_mean']:.2%} | {a2['utilization']:.1%} | |")
        if a:
            lines.append(f"| {a['N']} | {a['M']} | {a['D']:g} | ar-ray | {a['wall_s']:.1f} | {a['overhead_b_s']:.4f} "
                         f"| {a['inside_s']:.4f} (trainer overhead_seconds {a['overhead_a_s']:.4f}) | {a['gap_s']:.4f} "
                         f"| {a['child_minus_D_median_s']:.3f} "
                         f"| {a['wall_overhead_s']:.3f} | {a['duty_min']:.2%} / {a['duty_mean']:.2%} "
                         f"| {a['utilization']:.1%} | |")
        for t in (by[key].get("Ray Tune"), by[key].get("Ray Tune (reuse_actors)")):
            if not t:
                continue
            ratio = ""
            if a:
                ratio = (f"{t['overhead_s'] / a['overhead_b_s']:.0f}× (steady), "
                         f"{t['overhead_s'] / a['wall_overhead_s']:.1f}× (whole run)")
            lines.append(f"| {t['N']} | {t['M']} | {t['D']:g} | {t['system']} | {t['wall_s']:.1f} | {t['overhead_s']:.3f} "
                         f"| {t['inside_trainable_s']:.4f} (in trainable, outside child) | – "
                         f"| {t['child_minus_D_median_s']:.3f} | {t['overhead_s']:.3f} "
                         f"| – | {t['utilization']:.1%} | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trainers", type=int, nargs="+", default=[2, 8, 16], help="N values (fake CPUs, 1 per trainer)")
    ap.add_argument("--experiments", type=int, nargs="+", default=None,
                    help="M per N (one value for all, or one per N); default 20 x N")
    ap.add_argument("--duration", type=float, default=2.0, help="D: seconds the stand-in child sleeps")
    ap.add_argument("--proposers", type=int, default=2)
    ap.add_argument("--skip-tune", action="store_true")
    ap.add_argument("--sandbox", nargs="+", default=["auto"], choices=["auto", "bwrap", "none"],
                    help="ar-ray's --sandbox; several values run ar-ray once per value, one after the other")
    ap.add_argument("--track", nargs="+", default=["none"], choices=["none", "tensorboard", "mlflow", "wandb"],
                    help="ar-ray's --track (none: without); several values run ar-ray once per value, in this order "
                         "(e.g. none tensorboard none tensorboard: A B A B in one invocation)")
    ap.add_argument("--skip-ar-ray", action="store_true")
    ap.add_argument("--tune-reuse-actors", action="store_true",
                    help="TuneConfig(reuse_actors=True) (Tune's default is False: one new actor per trial)")
    ap.add_argument("--json", help="write every figure to this file")
    ap.add_argument("--workdir", help="keep run dirs here (default: a temp dir, removed)")
    args = ap.parse_args(argv)
    exps = args.experiments or [20 * n for n in args.trainers]
    if len(exps) == 1:
        exps = exps * len(args.trainers)
    if len(exps) != len(args.trainers):
        ap.error("--experiments takes one value, or one per --trainers value")

    import ray
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "1000")
    tmp = tempfile.TemporaryDirectory(prefix="ar-ray-bench-") if not args.workdir else None
    root = Path(args.workdir or tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    target = make_target(root, args.duration)
    print(f"# {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, Ray {ray.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}; work dir {root}", file=sys.stderr)

    results = []
    for n, m in zip(args.trainers, exps):
        start_ray(n)
        try:
            for mode, track in ([] if args.skip_ar_ray else [(m_, t) for m_ in args.sandbox for t in args.track]):
                load0 = os.getloadavg()[0]
                r = run_ar_ray(n, m, args.duration, target, root, args.proposers, mode, track)
                r["loadavg_1min_before_after"] = (load0, os.getloadavg()[0])
                r["sandbox"] = mode
                results.append(r)
                print(f"ar-ray   N={n} M={m} D={args.duration:g} sandbox {mode} track {track}: wall {r['wall_s']:.1f}s, overhead/exp "
                      f"(a) {r['overhead_a_s']*1e3:.1f} ms (b) {r['overhead_b_s']*1e3:.1f} ms, duty min "
                      f"{r['duty_min']:.3%} (all runs {r['all_duty_min']:.3%}, max gap {r['gap_max_s']*1e3:.0f} ms / "
                      f"{r['all_gap_max_s']*1e3:.0f} ms), status {r['status']}, skipped {r['skipped']}, "
                      f"events {r['events']} {r['event_errors'][:1]}, load {r['loadavg_1min_before_after']}", file=sys.stderr)
                print(f"         driver time: {r['driver_time_s']}; start-up + teardown "
                      f"{r['startup_and_teardown_s']:.2f} s; trackers {r['trackers']}", file=sys.stderr)
            if not args.skip_tune:
                load0 = os.getloadavg()[0]
                t = run_tune(n, m, args.duration, target, root, args.tune_reuse_actors)
                t["loadavg_1min_before_after"] = (load0, os.getloadavg()[0])
                results.append(t)
                print(f"Ray Tune N={n} M={m} D={args.duration:g}: wall {t['wall_s']:.1f}s, overhead/trial "
                      f"{t['overhead_s']:.3f}s, errors {t['errors']}, load {t['loadavg_1min_before_after']}", file=sys.stderr)
        finally:
            ray.shutdown()
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
