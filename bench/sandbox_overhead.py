"""What confinement costs per experiment: the same trivial run under --sandbox none and bwrap, interleaved.

    python bench/sandbox_overhead.py [--runs 30]

Each run is a full Trainer.run() of a target whose train.py prints its metric and
exits, so the figure is the trainer's own cost: materialize the run dir, start the
reaper (and bubblewrap), watch the limits, verify the read-only files and the data.
Runs alternate between the modes so machine noise hits both alike; the ratio is the
figure to compare.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers_targets import candidate, make_target  # noqa: E402
from trainers.sandbox import Sandbox, bwrap_problem  # noqa: E402
from trainers.trainer import Trainer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    if bwrap_problem():
        sys.exit(f"bubblewrap cannot run here: {bwrap_problem()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        target = make_target(tmp / "target", "print('val_bpb: 1.0')\n")
        trainers = {mode: Trainer(target, str(tmp / mode / "experiments"), box=Sandbox(mode=mode))
                    for mode in ("none", "bwrap")}
        for t in trainers.values():
            t.sandbox_note()
        times: dict[str, list[float]] = {m: [] for m in trainers}
        for i in range(args.runs + 2):
            for mode, t in trainers.items():
                t0 = time.perf_counter()
                res = t.run(candidate(target))
                assert res.status == "ok", res
                if i >= 2:  # the first two warm the page cache
                    times[mode].append(time.perf_counter() - t0)
    med = {m: statistics.median(v) * 1000 for m, v in times.items()}
    for m, v in times.items():
        print(f"{m:6s} median {med[m]:6.1f} ms   p90 {sorted(v)[int(0.9 * len(v))] * 1000:6.1f} ms   ({len(v)} runs)")
    print(f"bwrap / none: {med['bwrap'] / med['none']:.2f}x; extra per experiment: {med['bwrap'] - med['none']:.1f} ms")


if __name__ == "__main__":
    main()
