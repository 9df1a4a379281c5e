#!/usr/bin/env python
"""Does the noise-aware default beat greedy on true improvement per trainer-second? The judge of the policy.

The target is `bench/standin/`: seven real knobs, four placebos, val_bpb = truth + Gaussian noise (sd
AR_NOISE, default 0.01) drawn per run, and the truth printed beside it. The truth of any row's code is
computed from its files here, so every keep can be called a real win or a false accept.

Two ways to run the same experiment:
- `--real` (the judge): real `ar-ray run` processes, real Ray, real trainers (subprocesses), the mutate
  proposer, one process per mode and seed;
- default (fast, for trying alternatives): the real Driver, Policy and MutateProposer in this process
  with Ray replaced by a simulated clock (the fake of bench/driver_scale.py); trainers compute the same
  truth + noise as the stand-in's train.py, each run 1 simulated second.

Reported per mode (mean over seeds): false accepts (keeps whose true metric did not improve), real wins,
true gain (truth of the shipped target minus truth of the final best), trainer-seconds (the children's
own wall time, summed over every run), true gain per trainer-second and its ratio to greedy, and how far
the best's reported metric is from its truth (in noise units).

    python bench/policy_real.py --seeds 3 --experiments 200 --trainers 8            # fast, seconds
    python bench/policy_real.py --real --seeds 3 --experiments 200 --trainers 8     # real, ~minutes per run
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import types
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH), str(BENCH / "standin")]

from train import truth  # noqa: E402  (bench/standin/train.py)

from ar_ray.ledger import load  # noqa: E402

STANDIN = BENCH / "standin"
REAL = ("LEARNING_RATE", "WIDTH", "DEPTH", "WEIGHT_DECAY", "BATCH_SIZE", "DROPOUT", "HEADS")
KNOBS = REAL + ("CLIP", "BETA2", "WARMUP_STEPS", "LOG_EVERY")


def knobs_of(source: str) -> dict[str, object]:
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id in KNOBS:
            out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def true_of(files: dict[str, str]) -> float:
    k = knobs_of(files["train.py"])
    return truth(*(k[n] for n in REAL))


def measure(files: dict[str, str], seed: int, noise: float) -> float:
    """What the stand-in's train.py prints for this code and seed (the same draw)."""
    k = knobs_of(files["train.py"])
    rng = random.Random(f"{seed}-{tuple(k[n] for n in KNOBS)}")
    return true_of(files) + rng.gauss(0.0, noise)


def score(run_dir: Path, best_metric: float | None, noise: float, upto: int | None = None) -> dict:
    """Figures of one run; `upto`: as if it had stopped after that many new candidates (ledger order)."""
    df = load(run_dir)
    if upto is not None:
        df = df[(df.role == "screen").cumsum() <= upto]
    ran = df[df.decision != "skip"]
    start = true_of({"train.py": (STANDIN / "train.py").read_text()})
    prev, false, real, curve, spent = start, 0, 0, [(0.0, 0.0)], 0.0
    for _, r in df.iterrows():  # in ledger order: trainer-seconds spent so far, true gain of the best so far
        spent += 0.0 if r.decision == "skip" else float(r.run_seconds or 0.0)
        if r.decision != "keep":
            continue
        t = true_of(dict(r["files"]))
        if t < prev - 1e-12:
            real += 1
        else:
            false += 1
        prev = t
        curve.append((spent, start - t))
    seconds = float(ran.run_seconds.fillna(0).sum())
    gain = start - prev
    return {"false": false, "real": real, "gain": gain, "seconds": seconds, "runs": len(ran),
            "per_s": gain / seconds if seconds else 0.0,
            "best_error": (abs(best_metric - prev) / noise) if best_metric is not None else float("nan"),
            "roles": ran.role.value_counts().to_dict(), "curve": curve}


def gain_at(curve: list, seconds: float) -> float:
    """True gain of the best once `seconds` trainer-seconds were spent."""
    return max((g for s, g in curve if s <= seconds), default=0.0)


# ---- fast: the real driver on a simulated clock ----

def run_fast(acceptance: str, seed: int, experiments: int, trainers: int, noise: float, tmp: Path,
             extra: dict) -> tuple[Path, float | None]:
    import driver_scale as ds

    import ar_ray.engine.driver as driver_mod
    from ar_ray.engine.driver import Driver
    from ar_ray.ledger.store import Ledger
    from ar_ray.search.policy import Policy, PolicyConfig
    from ar_ray.target import load_target
    from ar_ray.types import Result
    from proposers.mutate import MutateProposer

    sim = ds.Sim(1.0, noise, seed)

    def schedule(i, cand):
        d = 1.0 * (0.9 + 0.2 * sim.rng.random())
        m = measure(cand.files, cand.seed, noise)
        res = Result(cand.experiment_id, "ok", metric=m, metrics={"val_bpb": f"{m:.6f}"}, returncode=0,
                     trainer=f"trainer-{i}", node="sim", started_at=sim.now, ended_at=sim.now + d, child_seconds=d)
        ref = ds.Ref(res, False, i)
        sim.n += 1
        ds.heapq.heappush(sim.heap, (sim.now + d, sim.n, ref))
        return ref

    class Trainer:
        def __init__(self, i):
            self.run = ds._Method(lambda c: schedule(i, c))

    class Proposer:  # the real MutateProposer, answering at once
        def __init__(self, i):
            self.p = MutateProposer(f"mutate-{i}", ("train.py",), seed=seed)
            self.propose = ds._Method(lambda h, f, ref: ds.Ref(self.p.propose(h, f, ref.value), True))
            self.update = ds._Method(lambda ref: self.p.update(ref.value))

    driver_mod.ray = types.SimpleNamespace(wait=sim.wait, get=sim.get, put=sim.put)
    target = load_target(STANDIN)
    run_dir = tmp / f"{acceptance}-{seed}"
    ledger = Ledger(run_dir)
    policy = Policy(PolicyConfig(acceptance=acceptance, **extra), target.direction)
    drv = Driver(target, ledger, "bench", [Trainer(i) for i in range(trainers)], [Proposer(i) for i in range(2)],
                 policy, queue_depth=trainers + 2, max_experiments=experiments, seed=seed)
    drv.run()
    return run_dir, drv.best.metric


# ---- real: ar-ray run processes ----

def run_real(acceptance: str, seed: int, experiments: int, trainers: int, noise: float, tmp: Path,
             extra: dict) -> tuple[Path, float | None]:
    run_dir = tmp / f"{acceptance}-{seed}"
    env = {**os.environ, "AR_NOISE": str(noise)}
    cmd = [sys.executable, "-m", "ar_ray.cli.main", "run", "--target", str(STANDIN), "--run-dir", str(run_dir),
           "--acceptance", acceptance, "--seed", str(seed), "--max-experiments", str(experiments),
           "--trainers", str(trainers), "--cpus-per-trainer", str(round(max(0.05, (os.cpu_count() or 2) / trainers / 2), 3)),
           "--proposers", "2", "--sandbox", "none", "--budget", "1"]
    for k, v in extra.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"ar-ray run failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    status = json.loads((run_dir / "status.json").read_text())
    return run_dir, status.get("best_metric")


def _number(v: str):
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--real", action="store_true", help="real `ar-ray run` processes (the judge)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--experiments", type=int, default=200)
    ap.add_argument("--trainers", type=int, default=8)
    ap.add_argument("--noise", type=float, default=0.01)
    ap.add_argument("--modes", nargs="+", default=["greedy", "confirm"])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a PolicyConfig field for the confirm mode (fast) or a flag (real), e.g. --set k_confirm=2.5")
    ap.add_argument("--greedy-experiments", type=int, default=None,
                    help="greedy's experiments (default 2 x --experiments), so its progress can also be read at the "
                         "trainer-seconds the other modes spent")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    extra = {k: _number(v) for k, v in (s.split("=", 1) for s in args.set)}
    tmp = Path(tempfile.mkdtemp(prefix="ar-policy-"))
    run = run_real if args.real else run_fast
    results = {}
    for mode in args.modes:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            n = (args.greedy_experiments or 2 * args.experiments) if mode == "greedy" else args.experiments
            run_dir, best = run(mode, seed, n, args.trainers, args.noise, tmp, extra if mode != "greedy" else {})
            r = score(run_dir, best, args.noise)
            if mode == "greedy":  # its first --experiments, for the comparison at equal experiments
                r["first"] = score(run_dir, None, args.noise, upto=args.experiments)
            results.setdefault(mode, []).append(r)
            print(f"{mode:8s} seed {seed}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                       for k, v in r.items() if k not in ("curve", "first")),
                  file=sys.stderr)
    print(f"\n{'real' if args.real else 'fast (simulated clock)'}: {args.seeds} seeds x {args.experiments} experiments x "
          f"{args.trainers} trainers, noise {args.noise}; sums over seeds, best error as a mean. Greedy ran "
          f"{args.greedy_experiments or 2 * args.experiments} experiments: its row at {args.experiments} is read off the "
          f"same runs; 'greedy at same trainer-s' is its true gain once it had spent what the mode spent, per seed\n")
    print("| mode | false accepts | real wins | true gain | trainer-s | gain per 1000 trainer-s | vs greedy "
          "| runs | gain per 1000 runs | vs greedy | greedy at same trainer-s | vs greedy at same trainer-s "
          "| best metric - truth (noise units) |\n|" + "---|" * 13)
    greedy = results.get("greedy")
    for mode, rs in results.items():
        if mode == "greedy":  # the first --experiments of its longer run: the comparison at equal experiments
            rs = [{**r["first"], "best_error": r["best_error"]} for r in rs]
            base = sum(r["gain"] for r in rs) / sum(r["seconds"] for r in rs)
            base_runs = sum(r["gain"] for r in rs) / sum(r["runs"] for r in rs)
        gain, secs, runs = sum(r["gain"] for r in rs), sum(r["seconds"] for r in rs), sum(r["runs"] for r in rs)
        per, per_run = 1000 * gain / secs if secs else 0.0, 1000 * gain / runs if runs else 0.0
        ratio = f"{per / base / 1000:.2f}x" if greedy else "-"
        ratio_runs = f"{per_run / base_runs / 1000:.2f}x" if greedy else "-"
        same = (gain if mode == "greedy" else sum(gain_at(g["curve"], r["seconds"]) for g, r in zip(greedy, rs))) \
            if greedy else float("nan")
        print(f"| {mode} | {sum(r['false'] for r in rs)} | {sum(r['real'] for r in rs)} | {gain:.4f} | {secs:.0f} "
              f"| {per:.4f} | {ratio} | {runs} | {per_run:.4f} | {ratio_runs} | {same:.4f} "
              f"| {gain / same if same else float('nan'):.2f}x | {statistics.fmean(r['best_error'] for r in rs):.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
