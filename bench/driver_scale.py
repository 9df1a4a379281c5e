#!/usr/bin/env python
"""The driver's own logic at 1,000 trainers, on a simulated clock.

`ar_ray.engine.driver.Driver` and `ar_ray.search.policy.Policy` run unchanged in this process;
only Ray is replaced. The bench assigns a fake `ray` namespace (wait/get/put) to
`ar_ray.engine.driver.ray` and hands the driver fake actor handles:

- trainer `run.remote(candidate)` schedules its Result at sim_now + D (D = --duration
  seconds +- 10 % jitter) on a heap; the metric comes from the candidate's files
  (a quadratic bowl in the constants plus seeded noise), so the search really climbs;
- proposer `propose.remote(...)` returns an already-ready ref holding a valid Proposal
  (the current best's train.py with one constant changed; unique `edit_hash`);
  `update.remote` is a no-op;
- `ray.wait` returns what is ready; when nothing is, it advances the simulated clock to
  the next finish time. Simulated seconds cost nothing, so every real second measured
  here is the driver's (or the ledger's, or the fake's, which is subtracted).

Measured (time.process_time for CPU, time.perf_counter for wall):
- driver CPU per experiment, total and excluding Ledger.append, fake-Ray time removed;
- Ledger.append wall/CPU per row, per ledger-size decade (one append per round: with
  1,000 trainers and jittered durations, results land one at a time);
- dispatch latency: wall time from the fake `wait` handing a trainer's result to the
  driver to that trainer's next `run.remote`.

    python bench/driver_scale.py --trainers 1000 --experiments 100000 --time-limit 600
    python bench/driver_scale.py --experiments 20000 --no-fsync --acceptance confirm
    python bench/driver_scale.py --experiments 5000 --profile   # cProfile top functions
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import random
import re
import resource
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ar_ray.engine.driver as driver_mod  # noqa: E402
from ar_ray.code.codehash import code_hash  # noqa: E402
from ar_ray.engine.driver import Driver  # noqa: E402
from ar_ray.ledger.store import Ledger  # noqa: E402
from ar_ray.search.policy import Policy, PolicyConfig  # noqa: E402
from ar_ray.target import load_target  # noqa: E402
from ar_ray.types import Baseline, Proposal, Result  # noqa: E402

CONSTANTS = {"LEARNING_RATE": 0.04, "WEIGHT_DECAY": 0.1, "WARMUP_FRAC": 0.05, "DROPOUT": 0.1, "DEPTH_SCALE": 1.0}
OPTIMUM = {"LEARNING_RATE": 0.012, "WEIGHT_DECAY": 0.02, "WARMUP_FRAC": 0.1, "DROPOUT": 0.0, "DEPTH_SCALE": 1.7}
CONST_RE = re.compile(r"^([A-Z_]+) = (\S+)$", re.MULTILINE)


def make_target(root: Path, pad_lines: int) -> Path:
    t = root / "target"
    t.mkdir()
    body = "".join(f"{k} = {v!r}\n" for k, v in CONSTANTS.items())
    pad = "".join(f"# model code line {i}: x = layer_{i % 17}(x) + residual\n" for i in range(pad_lines))
    (t / "train.py").write_text(f'"""toy target"""\n{body}\n{pad}print("---")\n')
    (t / "prepare.py").write_text("# read-only\n")
    return t


# ---- the fake Ray ----

class Ref:
    __slots__ = ("value", "done", "trainer")

    def __init__(self, value=None, done=False, trainer=None):
        self.value, self.done, self.trainer = value, done, trainer


class Sim:
    def __init__(self, duration: float, noise: float, seed: int):
        self.now = 0.0
        self.heap: list = []
        self.n = 0
        self.duration, self.noise = duration, noise
        self.rng = random.Random(seed)
        self.fake_cpu = 0.0  # process time spent inside the fake (subtracted from the driver's)
        self.landed_wall: dict[int, float] = {}  # trainer -> perf_counter when its result was handed over
        self.latency: list[tuple[int, float]] = []  # (ledger rows at the time, seconds)
        self.ledger: Ledger | None = None

    # ray.wait / ray.get / ray.put
    def wait(self, refs, num_returns=1, timeout=None):
        c0 = time.process_time()
        ready = [r for r in refs if r.done]
        if len(ready) < num_returns and timeout != 0 and self.heap:
            t, _, ref = heapq.heappop(self.heap)
            self.now = t
            ref.done = True
            while self.heap and self.heap[0][0] <= t:
                heapq.heappop(self.heap)[2].done = True
            ready = [r for r in refs if r.done]
        ready = ready[:num_returns]
        taken = set(map(id, ready))
        rest = [r for r in refs if id(r) not in taken]
        stamp = time.perf_counter()
        for r in ready:
            if r.trainer is not None:
                self.landed_wall[r.trainer] = stamp
        self.fake_cpu += time.process_time() - c0
        return ready, rest

    def get(self, ref):
        return ref.value

    def put(self, value):
        return Ref(value, True)

    def schedule(self, trainer: int, candidate) -> Ref:
        c0 = time.process_time()
        stamp = time.perf_counter()
        if trainer in self.landed_wall:
            self.latency.append((len(self.ledger), stamp - self.landed_wall.pop(trainer)))
        rng = self.rng
        vals = {k: float(v) for k, v in CONST_RE.findall(candidate.files["train.py"])}
        loss = 0.8 + sum(((vals.get(k, CONSTANTS[k]) - o) / (abs(o) + 0.05)) ** 2 for k, o in OPTIMUM.items()) * 0.01
        metric = loss + rng.gauss(0.0, self.noise)
        d = self.duration * (0.9 + 0.2 * rng.random())
        res = Result(candidate.experiment_id, "ok", metric=metric, metrics={"val_bpb": f"{metric:.6f}"},
                     returncode=0, trainer=f"trainer-{trainer}", node="sim", started_at=self.now,
                     ended_at=self.now + d, child_seconds=d, overhead_seconds=0.1)
        ref = Ref(res, False, trainer)
        self.n += 1
        heapq.heappush(self.heap, (self.now + d, self.n, ref))
        self.fake_cpu += time.process_time() - c0
        return ref


class _Method:
    __slots__ = ("remote",)

    def __init__(self, fn):
        self.remote = fn


class FakeTrainer:
    def __init__(self, sim: Sim, i: int):
        self.run = _Method(lambda c: sim.schedule(i, c))


class FakeProposer:
    def __init__(self, sim: Sim, i: int, seed: int):
        self.sim, self.name, self.rng, self.k = sim, f"sim-{i}", random.Random(seed * 1000 + i), 0
        self.propose = _Method(self._propose)
        self.update = _Method(lambda ref: None)

    def _propose(self, history, in_flight, best_ref) -> Ref:
        c0 = time.process_time()
        base: Baseline = best_ref.value
        text = base.files["train.py"]
        vals = dict(CONST_RE.findall(text))
        name = self.rng.choice(list(CONSTANTS))
        old = float(vals[name])
        new = round(old * math.exp(self.rng.gauss(0.0, 0.3)) + self.rng.gauss(0.0, 1e-3), 9)
        self.k += 1
        files = {"train.py": text.replace(f"{name} = {vals[name]}\n", f"{name} = {new!r}\n", 1)}
        p = Proposal(proposer=self.name, base_version=base.version, description=f"{name} {old:g} -> {new:g}",
                     files=files, diff=f"-{name} = {vals[name]}\n+{name} = {new!r}\n", edit_hash=code_hash(files),
                     lines_added=1, lines_removed=1, usage={"latency_s": 1.0})
        self.sim.fake_cpu += time.process_time() - c0
        return Ref(p, True)


# ---- measurement ----

def decade(n: int) -> int:
    return 10 ** max(3, len(str(max(n, 1))) - 1) if n >= 1000 else 0  # 0: rows 0..999


def run(args) -> dict:
    if args.no_fsync:
        os.fsync = lambda fd: None  # this process only
    tmp = Path(tempfile.mkdtemp(prefix="ar-driver-scale-", dir=args.tmp))
    target = load_target(make_target(tmp, args.pad_lines))
    sim = Sim(args.duration, args.noise, args.seed)
    driver_mod.ray = types.SimpleNamespace(wait=sim.wait, get=sim.get, put=sim.put)
    trainers = [FakeTrainer(sim, i) for i in range(args.trainers)]
    proposers = [FakeProposer(sim, i, args.seed) for i in range(args.proposers)]
    ledger = Ledger(tmp / "run")
    sim.ledger = ledger
    appends: list[tuple[int, int, float, float]] = []  # (rows before, rows, wall, cpu)
    real_append = ledger.append

    def timed_append(rows):
        n0, w0, c0 = len(ledger), time.perf_counter(), time.process_time()
        out = real_append(rows)
        appends.append((n0, len(out), time.perf_counter() - w0, time.process_time() - c0))
        return out

    ledger.append = timed_append
    marks: list[tuple[int, float, float, float, int]] = []  # (rows, cpu, wall, fake cpu, experiments ran)
    state = {"next": 1000}

    def on_event(kind, drv, row):
        if kind == "tick" and len(ledger) >= state["next"]:
            marks.append((len(ledger), time.process_time(), time.perf_counter(), sim.fake_cpu, drv.count.runs))
            state["next"] *= 10 if args.decades else 1
            if not args.decades:
                state["next"] = len(ledger) + args.mark_every
            if args.progress:
                print(f"  rows {len(ledger):>9,}  wall {time.perf_counter() - w_start:7.1f} s", file=sys.stderr)

    policy = Policy(PolicyConfig(acceptance=args.acceptance), target.direction)
    drv = Driver(target, ledger, "bench", trainers, proposers, policy,
                 queue_depth=args.queue_depth or args.trainers + args.proposers,
                 max_experiments=args.experiments, time_limit=args.time_limit, seed=args.seed, on_event=on_event)
    prof = None
    if args.profile:
        import cProfile
        prof = cProfile.Profile()
    c_start, w_start = time.process_time(), time.perf_counter()
    marks.append((0, c_start, w_start, 0.0, 0))
    if prof:
        prof.enable()
    count = drv.run()
    if prof:
        prof.disable()
    c_end, w_end = time.process_time(), time.perf_counter()
    marks.append((len(ledger), c_end, w_end, sim.fake_cpu, count.runs))
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    total_cpu, total_wall = c_end - c_start, w_end - w_start
    app_wall, app_cpu = sum(a[2] for a in appends), sum(a[3] for a in appends)
    runs = count.runs
    res = {
        "trainers": args.trainers, "proposers": args.proposers, "acceptance": args.acceptance,
        "fsync": not args.no_fsync, "rows": len(ledger), "runs": runs, "ran": count.ran, "kept": count.kept,
        "skipped": count.skipped, "starved": count.starved, "appends": len(appends),
        "sim_hours": sim.now / 3600, "wall_s": total_wall, "cpu_s": total_cpu, "fake_cpu_s": sim.fake_cpu,
        "append_wall_s": app_wall, "append_cpu_s": app_cpu, "maxrss_mib": maxrss,
        "cpu_per_run_ms": 1e3 * (total_cpu - sim.fake_cpu) / len(ledger),
        "cpu_per_run_ex_append_ms": 1e3 * (total_cpu - sim.fake_cpu - app_cpu) / len(ledger),
        "wall_per_run_ms": 1e3 * (total_wall - sim.fake_cpu) / len(ledger),
        "best_metric": drv.best.metric,
    }
    # per ledger-size band: driver CPU per run, append cost per row, dispatch latency
    bands = []
    for (r0, c0, w0, f0, n0), (r1, c1, w1, f1, n1) in zip(marks, marks[1:]):
        if r1 <= r0:
            continue
        ap = [a for a in appends if r0 <= a[0] < r1]
        lat = sorted(s for r, s in sim.latency if r0 <= r < r1)
        q = (lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3) if lat else (lambda p: float("nan"))
        ap_cpu = sum(a[3] for a in ap)
        bands.append({
            "rows": f"{r0:,}–{r1:,}", "runs": n1 - n0, "n": r1 - r0,
            "cpu_ms_per_run": 1e3 * (c1 - c0 - (f1 - f0)) / (r1 - r0),  # per row recorded (= per result)
            "cpu_ms_per_run_ex_append": 1e3 * (c1 - c0 - (f1 - f0) - ap_cpu) / (r1 - r0),
            "append_ms_per_row": 1e3 * sum(a[2] for a in ap) / max(1, sum(a[1] for a in ap)),
            "append_cpu_ms_per_row": 1e3 * ap_cpu / max(1, sum(a[1] for a in ap)),
            "append_max_ms": 1e3 * max((a[2] for a in ap), default=float("nan")),
            "lat_p50_ms": q(0.5), "lat_p99_ms": q(0.99), "lat_max_ms": (lat[-1] * 1e3 if lat else float("nan")),
        })
    res["bands"] = bands
    if prof:
        import io
        import pstats
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(args.profile)
        res["profile"] = s.getvalue()
    return res


def table(res: dict) -> str:
    head = ("| ledger rows | dispatched | driver CPU ms/row | excl. append | append ms/row (wall) | append CPU ms/row "
            "| slowest append ms | dispatch p50 ms | p99 ms | max ms |\n|" + "---|" * 10 + "\n")
    body = "".join(f"| {b['rows']} | {b['runs']:,} | {b['cpu_ms_per_run']:.2f} | {b['cpu_ms_per_run_ex_append']:.2f} "
                   f"| {b['append_ms_per_row']:.2f} | {b['append_cpu_ms_per_row']:.2f} | {b['append_max_ms']:.1f} "
                   f"| {b['lat_p50_ms']:.3f} | {b['lat_p99_ms']:.3f} | {b['lat_max_ms']:.1f} |\n" for b in res["bands"])
    r = res
    tail = (f"\n{r['trainers']} trainers, {r['proposers']} proposers, {r['acceptance']}, fsync {'on' if r['fsync'] else 'off'}: "
            f"{r['runs']:,} runs ({r['ran']:,} new, {r['kept']} kept, {r['skipped']} skipped, {r['starved']} starved) "
            f"-> {r['rows']:,} rows in {r['appends']:,} appends; {r['sim_hours']:.0f} simulated hours in "
            f"{r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU (fake Ray {r['fake_cpu_s']:.1f} s, appends "
            f"{r['append_wall_s']:.0f} s wall / {r['append_cpu_s']:.0f} s CPU); per row: {r['cpu_per_run_ms']:.2f} ms CPU, "
            f"{r['cpu_per_run_ex_append_ms']:.2f} ms excluding appends (per ledger row); max RSS {r['maxrss_mib']:.0f} MiB\n")
    return head + body + tail


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trainers", type=int, default=1000)
    ap.add_argument("--proposers", type=int, default=8)
    ap.add_argument("--experiments", type=int, default=100_000, help="new candidates (max_experiments)")
    ap.add_argument("--time-limit", type=float, default=None, help="real seconds; then in-flight runs drain")
    ap.add_argument("--acceptance", choices=("greedy", "confirm"), default="greedy")
    ap.add_argument("--duration", type=float, default=300.0, help="simulated seconds per run (+-10 %%)")
    ap.add_argument("--noise", type=float, default=0.003, help="metric noise (std)")
    ap.add_argument("--queue-depth", type=int, default=None)
    ap.add_argument("--pad-lines", type=int, default=200, help="filler lines in train.py (diff/hash size)")
    ap.add_argument("--no-fsync", action="store_true", help="make os.fsync a no-op in this process")
    ap.add_argument("--mark-every", type=int, default=0, help="band width in rows (0: decades 1e3, 1e4, ...)")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile; print the top N functions")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--tmp", default=None, help="folder for the run (default: system temp)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    args.decades = args.mark_every <= 0
    res = run(args)
    print(table(res))
    if "profile" in res:
        print(res.pop("profile"))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
