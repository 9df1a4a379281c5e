"""A plausible confirm-mode run written straight to a ledger, without running anything.

For examples, tests and benchmarks of the analysis and the report.
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

from ar_ray.ledger.store import RUN_FILE

HOSTILE = '<script>document.title="PWNED"</script><img src=x onerror="document.title=\'PWNED\'"> & $x^2$'


def _train_py(knobs: dict[str, float]) -> str:
    return "".join(f"{k} = {v!r}\n" for k, v in knobs.items()) + "print('---')\n"


def synthetic_run(run_dir: str | os.PathLike, n: int = 1000, seed: int = 0, trainers: int = 8,
                  gpus: tuple[str, ...] = ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"),
                  proposers: tuple[str, ...] = ("llm-0", "llm-1", "mutate-0"), hostile: bool = True,
                  batch: int = 2000, pad_file_lines: int = 0, pad_diff_lines: int = 0) -> Path:
    """Write a plausible confirm-mode run of about `n` ledger rows (+ run.json) without running anything:
    a 3-run baseline, screened proposals (some crash, time out or never run), confirmations of winners,
    keeps and repeats of each new best. For trying the report and the analysis helpers.

    pad_file_lines / pad_diff_lines: filler lines in train.py (stored on kept and baseline rows) and in each
    proposal's diff, for realistic row sizes (upstream's train.py is ~630 lines; a model's diff ~2 KB)."""
    from ar_ray.code import edits
    from ar_ray.ledger.store import Ledger

    rng = random.Random(seed)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = f"synthetic-{seed}"
    (run_dir / RUN_FILE).write_text(json.dumps({"run_id": run_id, "created_at": 1.7e9, "target": str(run_dir / "target"),
                                                "metric": "val_bpb", "direction": "min"}, indent=2))
    ledger = Ledger(run_dir)
    knob_names = [f"K{i}" for i in range(12)]
    best_knobs = {k: 0 for k in knob_names}
    filler = "".join(f"# filler line {i:04d} of a long training script, for realistic row sizes\n"
                     for i in range(pad_file_lines))
    diff_filler = "".join(f" # context line {i:04d} of a longer diff, for realistic row sizes\n" for i in range(pad_diff_lines))
    best_files = {"train.py": _train_py(best_knobs) + filler}
    best_true, best_mean, version = 1.0, None, 0
    versions = {0: None}
    noise = 0.001
    clock = 1.7e9
    seq = 0
    rows: list[dict] = []

    def emit(**row):
        nonlocal clock, seq
        dur = row.pop("dur", None)
        gpu = gpus[seq % len(gpus)] if gpus else None
        base = {"run_id": run_id, "experiment_id": f"e{seq:05d}", "best_version": version, "best_metric": best_mean,
                "proposed_at": clock - 5.0}
        if dur is not None:
            base.update(started_at=clock, ended_at=clock + dur, run_seconds=dur * (1.1 if gpu and "A100" in gpu else 1.0),
                        overhead_seconds=0.002, queue_seconds=0.1, trainer=f"trainer-{seq % trainers}", node="node-0",
                        gpu_model=gpu, seed=rng.randrange(1000), budget_seconds=300.0, returncode=0,
                        log_path=str(run_dir / "experiments" / f"e{seq:05d}" / "log.txt"))
            clock += dur / trainers
        else:
            clock += 1.0
        base.update(row)
        rows.append(base)
        seq += 1
        if len(rows) >= batch:
            ledger.append(rows)
            rows.clear()
        return base["experiment_id"]

    def measure(true):
        return true + rng.gauss(0, noise)

    first = "e00000"
    metrics = [measure(best_true) for _ in range(3)]
    for i, m in enumerate(metrics):
        best_mean = sum(metrics) / 3 if i == 2 else None
        emit(proposer="baseline", description="baseline of e00000: the target as shipped", status="ok",
             decision="baseline", role="baseline", group_id=first, metric=m, val_bpb=m, files=best_files,
             base_version=0, edit_hash="h0", dur=300.0)
    versions[0] = first
    while seq < n:
        proposer = proposers[seq % len(proposers)] if proposers else "mutate-0"
        knob = rng.choice(knob_names)
        value = best_knobs[knob] + rng.choice([-1, 1])
        desc = f"set {knob} to {value} (from {best_knobs[knob]})"
        if hostile and seq % 97 == 5:
            desc += " " + HOSTILE
        new = dict(best_knobs, **{knob: value})
        files = {"train.py": _train_py(new) + filler}
        # the diff of the knob lines only (difflib over the padded file would dominate the generation)
        diff = edits.unified_diff({"train.py": _train_py(best_knobs)}, {"train.py": _train_py(new)}) + diff_filler
        cost = {"cost_usd": 0.002 + rng.random() * 0.01, "prompt_tokens": 3000, "completion_tokens": 400,
                "proposer_seconds": 2.0 + rng.random()} if proposer.startswith("llm") else {"proposer_seconds": 0.01}
        common = {"proposer": proposer, "description": desc, "diff": diff, "base_version": version,
                  "parent_id": versions[version], "edit_hash": f"he{seq:05d}", "lines_added": 1, "lines_removed": 1, **cost}
        u = rng.random()
        if u < 0.04:
            emit(**common, status=rng.choice(["invalid_edit", "duplicate"]), decision="skip",
                 error="the edit did not apply")
            continue
        good = rng.random() < 0.1 / (1 + version / 10)
        effect = rng.gauss(-0.005, 0.001) * 0.97 ** version if good else rng.gauss(0.006, 0.002)
        true = best_true + effect
        if u < 0.10:
            status = rng.choice(["crash", "crash", "timeout", "oom", "diverged"])
            emit(**common, status=status, decision="discard", role="screen", returncode=1, dur=60.0 if status == "crash" else 310.0,
                 error=f"{status}: RuntimeError: something failed\n  File \"train.py\", line 3")
            continue
        m = measure(true)
        gain = best_mean - m
        if gain <= noise:
            emit(**common, status="ok", decision="discard", role="screen", metric=m, val_bpb=m, gain=gain,
                 threshold=noise, noise=noise, dur=300.0)
            continue
        gid = emit(**common, status="ok", decision="screened", role="screen", metric=m, val_bpb=m, gain=gain,
                   threshold=noise, noise=noise, dur=300.0)
        confirms = [measure(true) for _ in range(2)]
        mean = sum(confirms) / 2
        accepted = best_mean - mean > 2 * noise * math.sqrt(1 / 2 + 1 / 3)
        follow = {"proposer": "policy", "description": f"confirm of {gid}: {desc}"[:500], "base_version": version,
                  "parent_id": versions[version], "role": "confirm", "group_id": gid, "status": "ok",
                  "edit_hash": f"h{gid}", "noise": noise, "dur": 300.0}
        emit(**follow, decision="confirming", metric=confirms[0], val_bpb=confirms[0])
        if not accepted:
            emit(**follow, decision="reject", metric=confirms[1], val_bpb=confirms[1], group_mean=mean, group_n=2,
                 gain=best_mean - mean)
            continue
        version += 1
        old_mean = best_mean
        best_knobs, best_files, best_true, best_mean = new, files, true, mean
        versions[version] = gid
        emit(**follow, decision="keep", metric=confirms[1], val_bpb=confirms[1], group_mean=mean, group_n=2,
             gain=old_mean - mean, files=files)
        m = measure(true)
        best_mean = (2 * mean + m) / 3
        emit(proposer="policy", description=f"baseline of {gid}-b: {desc}"[:500], base_version=version, parent_id=gid,
             role="baseline", group_id=f"{gid}-b", status="ok", decision="baseline", metric=m, val_bpb=m,
             files=files, edit_hash=f"h{gid}", dur=300.0)
    if rows:
        ledger.append(rows)
    return run_dir


