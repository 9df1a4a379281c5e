"""Run a policy against a stand-in research problem on a simulated clock (no Ray, no waiting).

The stand-in: a file of N switches, `C0 = 0` ... `C{N-1} = 0`. Candidate i turns
switch i on; its true effect on the metric is `effects[i]` (negative = better,
since the metric is minimized) and effects add up, so two winners merged by a
rebase really are better together. Every run measures the true value plus
Gaussian noise. Trainers run in parallel; each run takes one time unit (with a
little jitter so results land in a realistic order). Proposals are made from
the best known when a trainer asks for work, so they go stale exactly as in a
real run.

With a promotion ladder (`config.rungs` > 1), `rungs` gives each rung's run length
(in full runs) and noise; a cheap rung may also see different effects
(`small_effects`: the small setting is only a proxy for the full one).

Used by the tests (does the policy find the real improvements and reject the
noise?) and by `bench/policy_sim.py` (true quality of the best over GPU-hours).
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from ar_ray.search.policy import Policy, PolicyConfig

BASE = 1.0


def switches(n: int, on: set[int]) -> dict[str, str]:
    return {"train.py": "".join(f"C{i} = {int(i in on)}\n" for i in range(n))}


def switched_on(files: dict[str, str]) -> set[int]:
    return {i for i, line in enumerate(files["train.py"].splitlines()) if line.endswith("= 1")}


@dataclass
class SimResult:
    true_best: list[tuple[float, float]] = field(default_factory=list)  # (gpu hours, true metric of the best)
    wall: list[float] = field(default_factory=list)  # simulated hours at each entry of true_best
    accepted: list[int] = field(default_factory=list)  # candidates that were accepted (in their own right)
    final_on: set[int] = field(default_factory=set)  # switches on in the final best
    runs: int = 0
    gpu_hours: float = 0.0
    end: float = 0.0  # simulated hours when the last result landed


def simulate(config: PolicyConfig, effects: list[float], trainers: int = 16, noise: float = 0.002,
             seed: int = 0, run_hours: float = 5 / 60, rungs: list[tuple[float, float]] | None = None,
             small_effects: list[float] | None = None) -> SimResult:
    """`rungs`: (length in full runs, noise sd) per ladder rung, cheapest first; default: one full rung."""
    rng = random.Random(seed)
    n = len(effects)
    policy = Policy(config, "min")
    out = SimResult()
    rungs = rungs or [(1.0, noise)] * config.rungs

    def true(files, rung=config.top):
        seen = small_effects if small_effects is not None and rung < config.top else effects
        return BASE + sum(seen[i] for i in switched_on(files))

    clock, events, next_id, todo = 0.0, [], 0, list(range(n))
    origin: dict[str, int] = {}  # screened experiment -> the candidate (switch) it tested
    followups = [(spec, "baseline") for spec in policy.start(switches(n, set()), "b0")]
    out.true_best.append((0.0, true(policy.best_files)))
    out.wall.append(0.0)

    def start(now):
        nonlocal next_id
        if followups:
            spec, _ = followups.pop(0)
            job = ("policy", spec.role, spec.group, spec.base_version, spec.files, spec.parent_id, None, spec.rung)
        elif todo and policy.ready:
            i = todo.pop(0)
            files = switches(n, switched_on(policy.best_files) | {i})
            job = ("proposal", "screen", None, policy.best_version, files, policy.best_id, i, 0)
        else:
            return False
        next_id += 1
        length = rungs[job[-1]][0]
        heapq.heappush(events, (now + length * (1.0 + rng.uniform(-0.05, 0.05)), next_id, job))
        return True

    idle = trainers
    while idle and start(clock):
        idle -= 1
    while events:
        clock, exp, job = heapq.heappop(events)
        idle += 1
        out.runs += 1
        _, role, group, base_version, files, parent, cand, rung = job
        out.gpu_hours += rungs[rung][0] * run_hours
        metric = true(files, rung) + rng.gauss(0.0, rungs[rung][1])
        before = policy.best_version
        verdict = policy.on_result(f"e{exp}", role, group if role != "screen" else None, base_version, files,
                                   parent, "ok", metric, rung)
        followups.extend((spec, spec.role) for spec in verdict.runs)
        if role == "screen":
            origin[f"e{exp}"] = cand
        if policy.best_version != before:
            out.accepted.append(origin.get(group or f"e{exp}", cand))
            out.true_best.append((out.gpu_hours, true(policy.best_files)))
            out.wall.append(clock * run_hours)
        while idle and start(clock):
            idle -= 1
    out.final_on = switched_on(policy.best_files)
    out.end = clock * run_hours
    return out

