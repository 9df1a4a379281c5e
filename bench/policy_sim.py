#!/usr/bin/env python
"""Research policy on a simulated clock: noise-aware `confirm` against greedy hill-climbing.

Uses `ar_ray.search.simulate.simulate` (no Ray, no waiting): N on/off switches, candidate i turns
switch i on with a true additive effect effects[i] (negative = better); every run measures
the true value plus Gaussian noise; runs take `run_hours` each on a simulated clock.

Each problem seed draws one candidate stream (the same for every policy): `--candidates`
candidates, 5 of them real improvements of `gain` (3 x noise, and a harder variant with
1.5 x noise), the rest neutral or slightly harmful, drawn from {0, 0, +0.0005, +0.001,
+0.002, +0.004}. Noise sd 0.002, each run 5 minutes. Policies:

1. confirm, fixed design: PolicyConfig(max_confirm_runs=2) (screen, re-run twice with new seeds, rebase stale
   winners), N trainers;
2. greedy:  PolicyConfig(acceptance="greedy"): a run that beats the best is the best, N trainers;
3. sequential greedy: the same rule with 1 trainer (upstream autoresearch);
4. confirm + ladder: PolicyConfig(rungs=2): new candidates screened with 1-minute runs (noise sd
   doubled, effects a proxy of the full ones: 0.7 x the full effect plus N(0, 0.001) of distortion per
   candidate), the top quarter promoted to 5-minute runs, accepted there by the confirm rule.
5. confirm, the default: PolicyConfig(): as 1, but a close call gets 2 more confirmation runs, up to 4.
6. confirm + ladder + rescreen: as 4, and a close call at the 1-minute rung gets one more 1-minute run.

    python bench/policy_sim.py --seeds 10 --candidates 200 --trainers 16 --plot docs/policy_sim.png

Reports per policy (mean over seeds, min-max in brackets): false accepts (accepts after which the
true metric of the best is no better: a neutral or harmful candidate, or a combination of near-misses
without a real improvement among them), real improvements in the final best, true metric of the
final best, GPU-hours used, wall-clock hours in all and until the final best was accepted,
and the true metric of the best at fixed GPU-hour marks. A policy that has finished before a
mark keeps its final best there.

`simulate` reports the best over GPU-hours (the lengths of the completed runs) and over
simulated wall-clock hours.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ar_ray.search import simulate as sim  # noqa: E402
from ar_ray.search.policy import PolicyConfig  # noqa: E402

NOISE = 0.002
RUN_HOURS = 1 / 12
N_REAL = 5
HARMLESS = [0.0, 0.0, 0.0005, 0.001, 0.002, 0.004]


def problem(seed: int, n: int, gain: float, n_real: int = N_REAL) -> tuple[list[float], set[int]]:
    """One candidate stream: n_real real improvements of `gain` at random places, the rest neutral/harmful."""
    rng = random.Random(seed)
    real = set(rng.sample(range(n), n_real))
    return [gain if i in real else rng.choice(HARMLESS) for i in range(n)], real


@dataclass
class Run:
    false_accepts: int
    real_final: int
    final_true: float
    gpu_hours: float
    wall_hours: float
    wall_to_final: float  # wall-clock hours until the final best was accepted
    curve: list[tuple[float, float, float]]  # (gpu hours, wall hours, true metric of the best)

    def at(self, x: float, axis: int) -> float:
        """True metric of the best at x GPU-hours (axis 0) or wall-clock hours (axis 1)."""
        value = self.curve[0][2]
        for point in self.curve:
            if point[axis] > x + 1e-9:
                break
            value = point[2]
        return value


LADDER_RUNGS = [(0.2, 2 * NOISE), (1.0, NOISE)]  # (run length in full runs, noise sd): 1-minute screens


def proxy(effects: list[float], seed: int) -> list[float]:
    """What a 1-minute run sees of each candidate: 0.7 x its full effect, plus its own distortion."""
    rng = random.Random(seed + 10_000)
    return [0.7 * e + rng.gauss(0.0, 0.001) for e in effects]


def run_one(config: PolicyConfig, trainers: int, effects: list[float], real: set[int], seed: int) -> Run:
    ladder = {"rungs": LADDER_RUNGS, "small_effects": proxy(effects, seed)} if config.rungs > 1 else {}
    r = sim.simulate(config, effects, trainers=trainers, noise=NOISE, seed=seed, run_hours=RUN_HOURS, **ladder)
    curve = [(gpu, wall, true) for (gpu, true), wall in zip(r.true_best, r.wall)]
    return Run(
        # an accept that did not make the truth better: a neutral or harmful candidate, or a combination of near-misses
        # with no real improvement among them (counting `c not in real` called every accepted combination false)
        false_accepts=sum(1 for (_, before), (_, after) in zip(r.true_best, r.true_best[1:]) if after >= before - 1e-12),
        real_final=len(real & r.final_on),
        final_true=r.true_best[-1][1],
        gpu_hours=r.gpu_hours,
        wall_hours=r.end,
        wall_to_final=curve[-1][1],
        curve=curve,
    )


def policies(trainers: int) -> list[tuple[str, PolicyConfig, int]]:
    return [
        (f"confirm, fixed 2 confirmation runs, {trainers} trainers", PolicyConfig(max_confirm_runs=2), trainers),
        (f"greedy, {trainers} trainers", PolicyConfig(acceptance="greedy"), trainers),
        ("greedy, sequential (1 trainer)", PolicyConfig(acceptance="greedy"), 1),
        (f"confirm + ladder (1-min screens), {trainers} trainers", PolicyConfig(rungs=2), trainers),
        (f"confirm, default (sequential: up to 4 confirmation runs), {trainers} trainers", PolicyConfig(), trainers),
        (f"confirm + ladder + rescreen, {trainers} trainers", PolicyConfig(rungs=2, rescreen=True), trainers),
    ]


def agg(values: list[float], fmt: str) -> str:
    return f"{format(statistics.fmean(values), fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def table(results: dict, marks: list[float]) -> str:
    head = ["real gain", "policy", "false accepts", f"real in final (of {N_REAL})", "true metric of final best",
            "GPU-h used", "wall-clock h", "wall-clock h to final best"] + [f"best at {m:g} GPU-h" for m in marks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (gain_label, name), runs in results.items():
        row = [gain_label, name,
               agg([r.false_accepts for r in runs], ".1f"), agg([r.real_final for r in runs], ".1f"),
               agg([r.final_true for r in runs], ".4f"), agg([r.gpu_hours for r in runs], ".1f"),
               agg([r.wall_hours for r in runs], ".2f"), agg([r.wall_to_final for r in runs], ".2f")]
        row += [agg([r.at(m, 0) for r in runs], ".4f") for m in marks]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(results: dict, gains: list[tuple[str, float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(len(gains), 2, figsize=(12, 4.2 * len(gains)), squeeze=False)
    colors = ["tab:blue", "tab:red", "tab:gray", "tab:green", "tab:purple", "tab:olive"]
    for row, (gain_label, gain) in enumerate(gains):
        names = [name for (g, name) in results if g == gain_label]
        for col, (axis, xlabel) in enumerate([(0, "GPU-hours"), (1, "wall-clock hours (log scale)")]):
            ax = axes[row][col]
            for color, name in zip(colors, names):
                runs = results[(gain_label, name)]
                end = max(r.gpu_hours if axis == 0 else r.wall_hours for r in runs)
                xs = (np.linspace(0, end, 400) if axis == 0
                      else np.geomspace(RUN_HOURS * 0.9, end, 400))
                ys = np.array([[r.at(x, axis) for x in xs] for r in runs])
                ax.step(xs, np.median(ys, axis=0), where="post", color=color, label=f"{name} (median)")
                ax.fill_between(xs, ys.min(axis=0), ys.max(axis=0), step="post", color=color, alpha=0.15,
                                label=f"{name} (min–max)")
            ax.axhline(sim.BASE + N_REAL * gain, color="black", lw=0.8, ls=":", label=f"all {N_REAL} real gains")
            if axis == 1:
                ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("true metric of the best (lower is better)")
            ax.set_title(f"real gains {gain_label}: best vs {xlabel.split(' (')[0]}")
            ax.grid(alpha=0.3)
    n_seeds = len(next(iter(results.values())))
    fig.suptitle(f"Simulated research run: noise sd {NOISE}, 5-minute runs, {n_seeds} problem seeds\n"
                 "(line: median over seeds, band: min–max; a finished policy keeps its final best)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 0.98))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=10, help="problem seeds (each: one candidate stream, one noise seed)")
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--trainers", type=int, default=16, help="parallel trainers of the confirm and greedy policies")
    ap.add_argument("--marks", type=float, nargs="+", default=[5, 10, 20], help="GPU-hour marks for the table")
    ap.add_argument("--plot", default=None, help="write the figure here (PNG)")
    args = ap.parse_args(argv)

    gains = [("3 x noise", -3 * NOISE), ("1.5 x noise", -1.5 * NOISE)]
    results: dict[tuple[str, str], list[Run]] = {}
    for gain_label, gain in gains:
        for seed in range(args.seeds):
            effects, real = problem(seed, args.candidates, gain)
            for name, config, trainers in policies(args.trainers):
                results.setdefault((gain_label, name), []).append(run_one(config, trainers, effects, real, seed))
    print(f"{args.candidates} candidates, {N_REAL} real gains, noise sd {NOISE}, runs of {RUN_HOURS * 60:g} min, "
          f"{args.seeds} seeds; mean (min–max); optimum = {sim.BASE} - {N_REAL} x gain\n")
    print(table(results, args.marks))
    if args.plot:
        plot(results, gains, args.plot)


if __name__ == "__main__":
    main()
