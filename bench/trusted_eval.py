"""What the trusted evaluation costs per experiment: the GPT target as shipped (train.py saves its model, a
sandboxed `prepare.py evaluate` child, started with the run, scores it) against the same target evaluating
in-process as before (a copy of the target folder whose ar-ray.toml has no `evaluate`), alternated A B A B
through one real Trainer per sandbox mode, at a fixed token budget and seed (so both train the same model).

    python bench/trusted_eval.py [--pairs 4] [--tokens 16384] [--modes bwrap,none]

Per variant, medians: the wall time of Trainer.run() (materialize -> Result),
the evaluation's share of the run (phases.eval: from `go` to its exit; in-process: from the 100 % line to the
metric line), the evaluation's own count (its eval_seconds line: load the file, score), when the evaluation
child was ready after its start (it starts with the run), save_model's seconds, and the trainer's
overhead_seconds. CPU preset.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers_targets import candidate  # noqa: E402
from ar_ray.target import load_target  # noqa: E402
from trainers.sandbox import Sandbox  # noqa: E402
from trainers.trainer import Trainer  # noqa: E402

GPT = ROOT / "trainers" / "gpt"


def in_process_copy(dst: Path) -> Path:
    """The GPT target as it evaluated before the trusted step: no evaluate, no heldout, the result file."""
    shutil.copytree(GPT, dst, ignore=shutil.ignore_patterns("__pycache__"))
    toml = (dst / "ar-ray.toml").read_text()
    toml = re.sub(r"^(evaluate|heldout|env) = .*\n", "", toml, flags=re.M)
    (dst / "ar-ray.toml").write_text(toml + "result_file = true\n")
    return dst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--modes", default="bwrap,none")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.update(AR_CACHE_DIR=str(tmp / "cache"), AR_PRESET="cpu", AR_THREADS="1")
        os.system(f"cd {GPT} && {sys.executable} prepare.py > /dev/null")
        targets = {"trusted": load_target(GPT, budget_tokens=args.tokens),
                   "in-process": load_target(in_process_copy(tmp / "gpt-inproc"), budget_tokens=args.tokens)}
        assert targets["trusted"].evaluate and not targets["in-process"].evaluate
        rows = []
        for mode in args.modes.split(","):
            trainers = {name: Trainer(t, str(tmp / mode / name), name=f"{mode}-{name}", box=Sandbox(mode=mode))
                        for name, t in targets.items()}
            got: dict[str, list] = {name: [] for name in targets}
            for i in range(args.pairs + 1):
                for name, t in trainers.items():
                    for _ in range(3):  # a SIGKILL from outside (another job's reaper on a shared machine): again
                        t0 = time.perf_counter()
                        res = t.run(candidate(targets[name], seed=11))
                        wall = time.perf_counter() - t0
                        if not (res.status == "oom" and "SIGKILL" in res.error_tail):
                            break
                        print(f"{mode} {name}: killed from outside (SIGKILL), run again", flush=True)
                    assert res.status == "ok", (name, res.status, res.error_tail)
                    if i:  # the first pair warms the page cache
                        log = Path(res.log_path).read_text()
                        saved = re.search(r"model saved for the trusted evaluation: .*, ([\d.]+)s\)", log)
                        ready = re.search(r"evaluation ready: .*\(([\d.]+)s after start-up\)", log)
                        got[name].append((wall, res.phases["eval"] or 0.0, float(saved.group(1)) if saved else 0.0,
                                          res.overhead_seconds, float(res.metrics.get("eval_seconds", 0.0)),
                                          float(ready.group(1)) if ready else 0.0, res.metric))
            metrics = {name: {v[6] for v in vals} for name, vals in got.items()}
            for name, vals in got.items():
                med = [statistics.median(v[k] for v in vals) for k in range(6)]
                rows.append((mode, name, *med, len(vals), sorted(metrics[name])))
            same = metrics["trusted"] == metrics["in-process"]
            print(f"{mode}: the same val_bpb both ways: {same} {metrics}", flush=True)
    print(f"\n{'sandbox':7s} {'variant':10s} {'wall s':>7s} {'eval s':>7s} {'its own':>7s} {'ready s':>7s} "
          f"{'save s':>7s} {'overhead s':>10s} runs")
    for mode, name, wall, ev, save, over, own, ready, n, _ in rows:
        print(f"{mode:7s} {name:10s} {wall:7.2f} {ev:7.2f} {own:7.2f} {ready:7.2f} {save:7.2f} {over:10.3f} {n}")
    for mode in args.modes.split(","):
        a = {name: wall for m, name, wall, *_ in rows if m == mode}
        print(f"{mode}: trusted - in-process = {a['trusted'] - a['in-process']:+.2f} s per experiment")


if __name__ == "__main__":
    main()
