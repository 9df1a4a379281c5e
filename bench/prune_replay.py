"""Replay --prune rules on a finished run: which screening runs each rule would have stopped, what that
saves, and which of them it should not have stopped.

A run is read from its ledger and its logs (the curve from the target's progress_pattern), so any earlier
run can be replayed, with or without --prune. For every screening run that finished, the rule is applied
as the driver would: against the curves of the best it was made from (that version's runs). A stopped run
saves the rest of its training time; a *wrong* stop is a run the policy screened (it beat the best by
k x noise, and would have been confirmed or rejected on more runs), and a *worse-or-better* count says how
many stopped runs were still better than the best's mean at the end.

    python bench/prune_replay.py RUN_DIR [--pattern REGEX]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import pandas as pd

from ar_ray.ledger.store import load
from ar_ray.search import pruning


def curves_of(df: pd.DataFrame, rx) -> dict[str, list]:
    out = {}
    for eid, path in zip(df.experiment_id, df.log_path):
        try:
            out[eid] = pruning.parse_points(Path(path).read_text(errors="replace"), rx)
        except (OSError, TypeError):
            out[eid] = []
    return out


def replay(df: pd.DataFrame, curves: dict, rule: pruning.PruneRule) -> dict:
    ran = df[(df.decision != "skip") & (df.status == "ok")]
    code_of_version = {int(v): h for v, h in ran[ran.role == "baseline"].groupby("base_version").edit_hash.first().items()}
    refs = {v: [curves[e] for e in ran[ran.edit_hash == h].experiment_id if curves[e]] for v, h in code_of_version.items()}
    best_mean = {v: ran[ran.edit_hash == h].metric.mean() for v, h in code_of_version.items()}
    screens = ran[ran.role == "screen"]
    stopped, saved, wrong, better = [], 0.0, 0, 0
    for row in screens.itertuples():
        limits = pruning.thresholds(rule, refs.get(int(row.base_version), []))
        points = curves[row.experiment_id]
        for at, limit in limits:  # as the watcher sees it: the first checkpoint whose window is too high
            if why := pruning.verdict(points, ((at, limit),)):
                stopped.append((row.experiment_id, at, why))
                saved += (1 - at) * (row.training_seconds or 0.0)
                wrong += row.decision in ("screened", "keep", "promoted")
                better += row.metric < best_mean.get(int(row.base_version), float("inf"))
                break
    total = ran.run_seconds.sum()
    return {"checkpoints": rule.checkpoints, "margin": rule.margin, "screens": len(screens), "stopped": len(stopped),
            "saved_fraction": saved / total if total else 0.0, "wrongly_stopped": wrong, "stopped_but_better": better,
            "screened_total": int(screens.decision.isin(["screened", "keep", "promoted"]).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--pattern", default=r"\| loss (?P<loss>\S+) \|.*\| (?P<percent>[\d.]+)% done")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    df = load(args.run_dir)
    curves = curves_of(df[df.decision != "skip"], pruning.compile_pattern(args.pattern))
    rows = [replay(df, curves, pruning.PruneRule(at, m)) for at, m in itertools.product(
        [(0.25,), (0.5,), (0.75,), (0.5, 0.75), (0.25, 0.5, 0.75)], [0.01, 0.02, 0.05, 0.1])]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'checkpoints':>18} {'margin':>6} {'stopped':>10} {'GPU time saved':>14} {'wrong':>5} {'better':>6}")
    for r in rows:
        print(f"{','.join(map(str, r['checkpoints'])):>18} {r['margin']:>6} {r['stopped']:>4} of {r['screens']:<3} "
              f"{100 * r['saved_fraction']:>13.1f}% {r['wrongly_stopped']:>2} of {r['screened_total']:<2} "
              f"{r['stopped_but_better']:>3}")


if __name__ == "__main__":
    main()
