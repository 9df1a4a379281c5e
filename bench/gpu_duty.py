"""Where back-to-back runs' time goes on one trainer, read from the ledger's columns (no Ray needed).

Runs --runs candidates of a target (its editable files as shipped, seeds 1..N) one after the other on one
`trainers.trainer.Trainer`, as a trainer actor runs them (the driver's dispatch adds milliseconds between runs;
a trainer that pre-starts the next run's child does so here too), appends each result to a real ledger as the
driver writes it (`ar_ray.engine.rows.result_row`), then reads the ledger back and reports, per run, the time
breakdown columns (startup/train/eval/teardown_seconds, run_seconds, overhead_seconds) and, over all runs, the
duty cycle: train + eval seconds / the trainer's wall time from the first start to the last end. The projection
to another budget keeps each run's non-training seconds (start-up, teardown, the trainer's own work) as measured.

bench/gpu_check.sh runs it on a GPU (two runs of the GPU preset); the tests run it on CPU with a toy target.

    python bench/gpu_duty.py --target trainers/gpt --runs 2 --gpus 0 --budget-seconds 60 --project 300 --json duty.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ar_ray.engine.rows import result_row  # noqa: E402
from ar_ray.ledger import store  # noqa: E402
from ar_ray.target import load_target  # noqa: E402
from ar_ray.types import Candidate, Proposal  # noqa: E402
from trainers.sandbox import Sandbox  # noqa: E402
from trainers.trainer import Trainer  # noqa: E402

COLUMNS = ["experiment_id", "status", "metric", "gpu_model", "started_at", "ended_at", "run_seconds",
           "overhead_seconds", "startup_seconds", "train_seconds", "eval_seconds", "teardown_seconds", "error"]


def _num(v) -> float:
    """A ledger number, 0.0 for a null (a phase the run did not have)."""
    return 0.0 if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def summarize(rows: list[dict], project: float | None = None) -> dict:
    """The duty cycle of consecutive runs on one trainer from their ledger rows (dicts of COLUMNS; times as epoch
    seconds). `project`: the duty cycle the same runs would have at this training budget (seconds)."""
    if not rows:
        raise ValueError("no runs to summarize")
    start = min(r["started_at"] for r in rows)
    end = max(r["ended_at"] for r in rows)
    wall = end - start
    train = sum(_num(r["train_seconds"]) for r in rows)
    evaluate = sum(_num(r["eval_seconds"]) for r in rows)
    out = {
        "runs": len(rows), "ok": sum(r["status"] == "ok" for r in rows), "wall_seconds": wall,
        "train_seconds": train, "eval_seconds": evaluate,
        "startup_seconds": sum(_num(r["startup_seconds"]) for r in rows),
        "teardown_seconds": sum(_num(r["teardown_seconds"]) for r in rows),
        "duty": (train + evaluate) / wall if wall > 0 else float("nan"),
        "training_share": train / wall if wall > 0 else float("nan"),
    }
    out["other_seconds"] = wall - train - evaluate  # start-up, teardown, the trainer's work, the gaps between runs
    if project:
        n = len(rows)
        per_run_other, per_run_eval = out["other_seconds"] / n, evaluate / n
        out["projected_budget_seconds"] = project
        out["projected_duty"] = (project + per_run_eval) / (project + per_run_eval + per_run_other)
    return out


def table(rows: list[dict]) -> str:
    head = ("run", "status", "metric", "run s", "startup", "train", "eval", "teardown", "trainer overhead")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["experiment_id"], r["status"], "-" if r["metric"] is None else f"{r['metric']:.6f}",
                 *(("-" if r[c] is None or (isinstance(r[c], float) and math.isnan(r[c])) else f"{r[c]:.2f}")
                   for c in ("run_seconds", "startup_seconds", "train_seconds", "eval_seconds", "teardown_seconds",
                             "overhead_seconds"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_back_to_back(target_dir: str, runs: int, gpus: list[int], budget: float | None, work: Path,
                     sandbox: str = "auto") -> Path:
    """Run the candidates on one trainer and write their rows to a ledger in work/run; returns that run dir."""
    target = load_target(target_dir)
    trainer = Trainer(target, str(work / "trainer"), name="trainer-0", gpu_ids=gpus, box=Sandbox(mode=sandbox))
    run_dir = work / "run"
    ledger = store.Ledger(run_dir)
    files = target.read_editable()
    try:
        for k in range(runs):
            cand = Candidate(experiment_id=f"duty-{k + 1}", base_version=0, files=files, seed=k + 1,
                             budget_seconds=budget)
            proposal = Proposal(proposer="baseline", base_version=0, description="the target as shipped", files=files)
            dispatched = time.time()
            result = trainer.run(cand)
            row = result_row("gpu-duty", None, proposal, cand, result, "baseline", 0, result.metric, dispatched,
                             budget)
            ledger.append(row)
            print(f"{cand.experiment_id}: {result.status} {target.metric} {result.metric} in {result.child_seconds:.1f} s"
                  + (f" ({result.error_tail.splitlines()[-1][:200]})" if result.error_tail else ""), flush=True)
    finally:
        close = getattr(trainer, "close", None)  # a pre-started child of a run that will not come ends here
        if close:
            close()
    return run_dir


def ledger_rows(run_dir: Path) -> list[dict]:
    df = store.load(run_dir, COLUMNS)
    rows = []
    for r in df.to_dict("records"):
        r["started_at"], r["ended_at"] = r["started_at"].timestamp(), r["ended_at"].timestamp()
        r["metric"] = None if r["metric"] is None or r["metric"] != r["metric"] else r["metric"]
        rows.append(r)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="target folder (e.g. trainers/gpt)")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--gpus", default="", help="GPU ids of the trainer, comma-separated (empty: a CPU trainer)")
    ap.add_argument("--budget-seconds", type=float, default=None, help="training budget of each run (default: the target's)")
    ap.add_argument("--sandbox", default="auto", choices=("auto", "bwrap", "none"))
    ap.add_argument("--project", type=float, default=300.0, help="also state the duty cycle at this budget (seconds)")
    ap.add_argument("--work", help="folder for the runs and the ledger (default: a temporary one, kept)")
    ap.add_argument("--json", help="write the per-run rows and the summary here")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    gpus = [int(g) for g in args.gpus.split(",") if g.strip()]
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-duty-"))
    run_dir = run_back_to_back(args.target, args.runs, gpus, args.budget_seconds, work, args.sandbox)
    rows = ledger_rows(run_dir)
    s = summarize(rows, args.project)
    print(table(rows))
    print(f"duty cycle of {s['runs']} back-to-back runs: {s['duty']:.1%} in training + evaluation "
          f"({s['train_seconds']:.1f} s training + {s['eval_seconds']:.1f} s evaluation of {s['wall_seconds']:.1f} s "
          f"from the first start to the last end; start-up {s['startup_seconds']:.1f} s, teardown "
          f"{s['teardown_seconds']:.1f} s, everything else {s['other_seconds'] - s['startup_seconds'] - s['teardown_seconds']:.1f} s)")
    if "projected_duty" in s:
        print(f"projected at a {s['projected_budget_seconds']:g} s budget, the rest as measured: {s['projected_duty']:.1%}")
    print(f"ledger: {run_dir / 'ledger'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": s}, indent=1, default=str))
    return 0 if s["ok"] == s["runs"] else 1


if __name__ == "__main__":
    sys.exit(main())
