"""Small targets and scripted proposers for engine tests (importable by Ray workers)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from helpers_targets import pids_with_env
from proposers.base import ProposalFailed, ProposerBase

# A target whose first run of any code (seed 0) is lucky by 0.05 and whose repeats (seeds 1, 2, ...) are not: the
# unmodified target's three runs give a noise of ~0.03, so every small change is a near-miss (a close call at the
# screen, or screened and then rejected by its confirmation runs): what the prompt's memory must show.
LUCKY = """import os
A = 0
B = 0
C = 0
D = 0
luck = -0.05 if os.environ.get("AR_SEED", "0") == "0" else 0.0
print(f"val_bpb: {1.0 - 0.001 * (A + B + C + D) + luck:.6f}")
"""

TOY_TRAIN = '''\
import json, os, sys, time
LR = 0.5
WIDTH = 8
USE_X = False
MODE = "ok"  # choices: ok
SLEEP = float(os.environ.get("TOY_SLEEP", "0.2"))
log = os.environ.get("TOY_TRACE")
start = time.time()
if MODE == "crash":
    raise RuntimeError("toy crash on purpose")
if MODE == "hang":
    import signal
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(3600)
if MODE == "nan":
    print("FAIL: loss diverged (nan) at step 3")
    sys.exit(1)
time.sleep(SLEEP)
v = abs(LR - 0.3) + abs(WIDTH - 12) * 0.01 + (0.0 if USE_X else 0.05)
if log:  # one line in the run's log (the run dir is all a sandboxed run may write)
    print("trace: " + json.dumps({"id": os.environ["AR_EXPERIMENT_ID"], "start": start, "end": time.time(),
                                  "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid(),
                                  "timeout": float(os.environ["AR_TIMEOUT_SECONDS"])}))
print("---")
if MODE != "silent":
    print(f"val_bpb: {v:.6f}")
print("num_steps: 10")
print("my_custom_key: hello")
'''


def make_toy(root: Path, toml: str | None = None, train: str = TOY_TRAIN) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.py").write_text(train)
    (root / "prepare.py").write_text("CONSTANT = 1\n")
    if toml is not None:
        (root / "ar-ray.toml").write_text(textwrap.dedent(toml))
    return root


def set_knob(source: str, name: str, value) -> str:
    lines = source.split("\n")
    for i, line in enumerate(lines):
        if line.startswith(f"{name} = "):
            comment = line[line.index("#"):] if "#" in line else ""
            lines[i] = f"{name} = {value!r}" + (f"  {comment}" if comment else "")
            return "\n".join(lines)
    raise KeyError(name)


class ScriptedProposer(ProposerBase):
    """Proposes a fixed list of knob settings in order, then cycles LR over fresh values.

    options: script = [[{"LR": 0.3}, "description"], ...]; a step {"__raw__": "text"} replaces train.py wholesale.
    """

    def __init__(self, name, editable, program="", seed=0, script=(), delay=0.0, cost=0.0):
        super().__init__(name, editable, program, seed)
        self.script = [tuple(s) for s in script]
        self.delay = delay
        self.cost = cost  # USD reported per proposal, as an LLM proposer would
        self.i = 0

    def make_edit(self, base, history, in_flight, usage):
        import time
        if self.delay:
            time.sleep(self.delay)
        step = self.i
        self.i += 1
        if self.cost:
            usage["cost_usd"] = self.cost
        if step < len(self.script):
            changes, description = self.script[step]
        else:
            changes, description = {"LR": round(0.31 + 0.001 * (step + 1000 * self.seed), 6)}, f"LR step {step}"
        if "__fail__" in changes:
            raise ProposalFailed("proposer_error", changes["__fail__"])
        if "__raw__" in changes:
            return description, {"train.py": changes["__raw__"]}
        src = base.files["train.py"]
        for k, v in changes.items():
            src = set_knob(src, k, v)
        return description, {"train.py": src}


def read_trace(run_dir: Path) -> list[dict]:
    """The `trace:` lines toy runs printed (TOY_TRACE=1), from every experiment log of a run."""
    return [json.loads(line[len("trace: "):]) for log in sorted(Path(run_dir).glob("experiments/*/log.txt"))
            for line in log.read_text().splitlines() if line.startswith("trace: ")]


def marker_processes(marker: str) -> list[int]:
    """Live processes whose environment carries `marker` (for orphan checks)."""
    return pids_with_env(marker)


# val_bpb = truth + noise of 0.002, fresh per seed; LR 0.5 -> 0.3 is a real gain of 0.2
NOISY_TRAIN = '''\
import os, random
LR = 0.5
WIDTH = 8
rng = random.Random(int(os.environ["AR_SEED"]) * 7919 + 1)
true = 1.0 + abs(LR - 0.3) + abs(WIDTH - 8) * 0.001
print("---")
print(f"val_bpb: {true + rng.gauss(0, 0.002):.6f}")
'''
