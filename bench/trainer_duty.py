#!/usr/bin/env python
"""Trainer duty cycle on the bundled GPT target: how much of a trainer's wall time is training + evaluation.

    python bench/trainer_duty.py --rev 0a9e9a1~1                  # A = that commit, B = this checkout
    python bench/trainer_duty.py --rev 0a9e9a1~1 --rounds 2 --off # A B B0 A B B0 (B0: B without prestart)
    python bench/trainer_duty.py --rev 0a9e9a1~1 --rev-b HEAD     # B = a worktree of HEAD (no uncommitted work)

Each arm is a real `ar-ray run` of that arm's own bundled GPT target (trainers/gpt), CPU preset, 1 trainer
(2 CPUs), bubblewrap on (--sandbox bwrap), upstream's greedy acceptance (one run per candidate, the
same seed), the LLM-free mutate proposer, --max-experiments N (default 10), and a token budget equal to
about 20 s of training on this machine (measured once first by a plain `python train.py` with a 20 s
budget, shared by every arm; --budget-tokens skips that). A is a `git worktree` of --rev, B this checkout
(working tree included) or a worktree of --rev-b; with --off, B0 is B's target with its `prestart` line removed. The arms run in
turn, A B (B0) A B (B0) ..., so a drift in the machine's load hits each alike. Nothing runs at once.

From each run's ledger (the trainer's own clocks):
- duty: (sum of train_seconds + eval_seconds) / (last ended_at - first started_at), every run;
- steady: the same after the first run (from the first run's end): the first run pays the once-per-trainer
  costs (setup's check, the first interpreter, nothing to overlap with);
- overhead/run: steady wall per run less its training and evaluation;
- at 300 s: the share projected for a 300 s budget with the same per-run overhead and evaluation:
  (300 + eval) / (300 + eval + overhead);
- startup, teardown: the mean phases; warm: runs that went in a pre-started child (their log says so);
- wall/run: the throughput figure (training that a pre-start slows down on a saturated CPU shows here and
  in train/run, not in the shares).
The machine's load (os.getloadavg) is printed before and after each arm: other work on it moves every
figure. Prints a markdown table; --json writes every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_text() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def worktree(rev: str, where: Path, name: str) -> Path:
    path = where / f"{name}-{re.sub(r'[^0-9A-Za-z]+', '_', rev)}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(path), rev], check=True,
                   capture_output=True, text=True)
    return path


def without_prestart(target: Path, where: Path) -> Path:
    """A copy of `target` whose ar-ray.toml has no prestart line (B0)."""
    out = where / "gpt-no-prestart"
    shutil.copytree(target, out, ignore=shutil.ignore_patterns("__pycache__"))
    toml = out / "ar-ray.toml"
    toml.write_text("".join(line for line in toml.read_text().splitlines(keepends=True)
                            if not line.lstrip().startswith("prestart")))
    return out


def calibrate(target: Path, seconds: float, where: Path) -> int:
    """Tokens that `seconds` of training take here: train.py with a wall-clock budget, read from its summary."""
    run = where / "calibrate"
    shutil.copytree(target, run, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AR_")}
    env.update(AR_PRESET="cpu", AR_THREADS="2", AR_BUDGET_SECONDS=str(seconds), AR_RESULT_FILE=str(run / "r.json"),
               AR_CACHE_DIR=str(where / "cache-calibrate"))
    subprocess.run([sys.executable, "prepare.py"], cwd=run, env=env, check=True, capture_output=True)
    out = subprocess.run([sys.executable, "train.py"], cwd=run, env=env, capture_output=True, text=True).stdout
    tokens = float(re.search(r"^total_tokens_M:\s*(\S+)", out, re.M).group(1)) * 1e6
    trained = float(re.search(r"^training_seconds:\s*(\S+)", out, re.M).group(1))
    step = 2048  # the CPU preset's tokens per optimizer step
    return max(step, int(round(tokens * seconds / trained / step)) * step)


def prepare_cache(target: Path, cache: Path) -> None:
    """Build the arm's data cache before its run (each arm has its own: prepare.py's layout may differ between
    commits under one cache key), so no run's clock counts building it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AR_")}
    env.update(AR_PRESET="cpu", AR_CACHE_DIR=str(cache))
    subprocess.run([sys.executable, "prepare.py"], cwd=target, env=env, check=True, capture_output=True)


def run_arm(name: str, checkout: Path, target: Path, run_dir: Path, args, cache: Path) -> dict:
    before = load_text()
    cmd = [sys.executable, "-m", "ar_ray.cli.main", "run", "--target", str(target), "--run-dir", str(run_dir),
           "--max-experiments", str(args.experiments), "--trainers", "1", "--cpus-per-trainer", "2",
           "--budget-tokens", str(args.budget_tokens), "--sandbox", "bwrap", "--acceptance", "greedy"]
    env = {**os.environ, "PYTHONPATH": str(checkout), "RAY_ADDRESS": "", "AR_CACHE_DIR": str(cache)}
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"arm {name}: ar-ray run failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    rev = args.rev if name == "A" else (args.rev_b or "this checkout (working tree included)")
    return {"arm": name, "rev": rev, "run_dir": str(run_dir),
            "load_before": before, "load_after": load_text(), "command_seconds": time.time() - t0,
            **figures(run_dir)}


def figures(run_dir: Path) -> dict:
    from ar_ray.ledger.store import load
    df = load(run_dir)
    df = df[df["started_at"].notna() & df["run_seconds"].notna()].sort_values("started_at").copy()
    for col in ("started_at", "ended_at"):  # timestamps -> seconds
        df[col] = df[col].map(lambda t: t.timestamp() if hasattr(t, "timestamp") else float(t))
    useful = (df["train_seconds"].fillna(0) + df["eval_seconds"].fillna(0)).tolist()
    start, end = df["started_at"].min(), df["ended_at"].max()
    n = len(df)
    steady_wall = end - df["ended_at"].iloc[0]
    steady_useful = sum(useful[1:])
    overhead = (steady_wall - steady_useful) / max(1, n - 1)
    evals = df["eval_seconds"].dropna()
    ev = float(evals.mean()) if len(evals) else 0.0
    warm = sum(1 for p in df["log_path"] if p and os.path.exists(p) and "pre-started child:" in Path(p).read_text(errors="replace"))
    bpb = df["metric"].dropna()

    def mean(col):
        v = df[col].dropna()
        return float(v.mean()) if len(v) else None
    return {"runs": n, "statuses": df["status"].value_counts().to_dict(), "wall": float(end - start),
            "duty": sum(useful) / (end - start), "steady": steady_useful / steady_wall if steady_wall > 0 else None,
            "overhead_per_run": overhead, "at_300s": (300 + ev) / (300 + ev + overhead),
            "wall_per_run": float(end - start) / n, "train_per_run": mean("train_seconds"),
            "eval_per_run": ev, "startup": mean("startup_seconds"), "teardown": mean("teardown_seconds"),
            "warm_runs": warm, "first_val_bpb": float(bpb.iloc[0]) if len(bpb) else None}


def table(results: list[dict]) -> str:
    cols = [("arm", "{}"), ("runs", "{}"), ("warm_runs", "{}"), ("duty", "{:.1%}"), ("steady", "{:.1%}"),
            ("at_300s", "{:.1%}"), ("overhead_per_run", "{:.2f} s"), ("wall_per_run", "{:.2f} s"),
            ("train_per_run", "{:.2f} s"), ("eval_per_run", "{:.2f} s"), ("startup", "{:.2f} s"),
            ("teardown", "{:.2f} s"), ("first_val_bpb", "{:.6f}"), ("load_before", "{}"), ("load_after", "{}")]
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        lines.append("| " + " | ".join("-" if r.get(c) is None else f.format(r[c]) for c, f in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", required=True, help="A: the commit to compare with (a git worktree of it)")
    ap.add_argument("--rev-b", default=None, help="B: a worktree of this commit (default: this checkout as it is)")
    ap.add_argument("--experiments", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=1, help="A B (B0) repeated this many times")
    ap.add_argument("--off", action="store_true", help="also B0: this checkout with prestart removed")
    ap.add_argument("--budget-tokens", type=int, default=None, help="default: ~--train-seconds of training here")
    ap.add_argument("--train-seconds", type=float, default=20.0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the run dirs and the worktree")
    args = ap.parse_args()
    where = Path(tempfile.mkdtemp(prefix="ar-ray-duty-"))
    print(f"# trainer duty: {time.strftime('%Y-%m-%d %H:%M:%S')} UTC, {os.cpu_count()} CPUs, {load_text()}", flush=True)
    a_root = worktree(args.rev, where, "A")
    b_root = worktree(args.rev_b, where, "B") if args.rev_b else ROOT
    try:
        b_target = b_root / "trainers" / "gpt"
        if args.budget_tokens is None:
            args.budget_tokens = calibrate(b_target, args.train_seconds, where)
            print(f"budget: {args.budget_tokens} tokens (~{args.train_seconds:g} s of training here, {load_text()})",
                  flush=True)
        arms = [("A", a_root, a_root / "trainers" / "gpt"), ("B", b_root, b_target)]
        if args.off:
            arms.append(("B0", b_root, without_prestart(b_target, where)))
        for name, _, target in arms:
            prepare_cache(target, where / f"cache-{name}")
        results = []
        for r in range(args.rounds):
            for name, checkout, target in arms:
                res = run_arm(name, checkout, target, where / f"{name}-{r}", args, where / f"cache-{name}")
                results.append(res)
                print(f"{name} round {r}: duty {res['duty']:.1%}, steady {res['steady']:.1%}, "
                      f"wall/run {res['wall_per_run']:.2f} s, warm {res['warm_runs']}/{res['runs']} "
                      f"({res['load_before']} -> {res['load_after']})", flush=True)
        print()
        print(table(results))
        summary = {}
        for name, _, _ in arms:
            mine = [x for x in results if x["arm"] == name]
            summary[name] = {k: statistics.median(x[k] for x in mine)
                             for k in ("duty", "steady", "at_300s", "wall_per_run", "overhead_per_run")}
        print()
        for name, s in summary.items():
            print(f"{name} (median of {args.rounds}): duty {s['duty']:.1%}, steady {s['steady']:.1%}, "
                  f"projected at 300 s {s['at_300s']:.1%}, overhead/run {s['overhead_per_run']:.2f} s, "
                  f"wall/run {s['wall_per_run']:.2f} s")
        if args.json:
            args.json.write_text(json.dumps({"budget_tokens": args.budget_tokens, "rev": args.rev,
                                             "results": results, "median": summary}, indent=2, default=str))
    finally:
        if not args.keep:
            for tree in {a_root, b_root} - {ROOT}:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
            shutil.rmtree(where, ignore_errors=True)
        else:
            print(f"kept: {where}")


if __name__ == "__main__":
    main()
