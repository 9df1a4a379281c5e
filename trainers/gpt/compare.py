"""
Compare train.py configurations across seeds (a helper for humans; not used by the engine).

    python compare.py --seeds 1 2 3 --set "" --set "DEPTH=3" --set "MATRIX_LR=0.04,DEPTH=3"

Each --set is a comma-separated list of NAME=literal overrides applied to a copy of
train.py (an empty string is the unmodified baseline). Runs are sequential, in a
temporary directory, with the environment passed through (AR_BUDGET_SECONDS, ...).
Prints val_bpb per seed and the mean/spread per configuration.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def patched_source(overrides):
    with open(os.path.join(HERE, "train.py")) as f:
        src = f.read()
    for item in filter(None, overrides.split(",")):
        name, value = (s.strip() for s in item.split("=", 1))
        src, n = re.subn(rf"^{name} = [^#\n]*?(\s*#|$)", lambda m, name=name, value=value: f"{name} = {value}{m.group(1)}", src, count=1, flags=re.M)
        if n != 1:
            sys.exit(f"no top-level constant {name} in train.py")
    return src


def run(overrides, seed):
    with tempfile.TemporaryDirectory() as d:
        shutil.copy(os.path.join(HERE, "prepare.py"), d)
        with open(os.path.join(d, "train.py"), "w") as f:
            f.write(patched_source(overrides))
        env = dict(os.environ, AR_SEED=str(seed))
        out = subprocess.run([sys.executable, "train.py"], cwd=d, env=env, capture_output=True, text=True, check=False).stdout
    m = re.search(r"^val_bpb:\s*(\S+)", out, re.M)
    steps = re.search(r"^num_steps:\s*(\S+)", out, re.M)
    return (float(m.group(1)) if m else float("nan")), (steps.group(1) if steps else "?")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--set", action="append", default=None, help="NAME=value[,NAME=value] ('' = baseline)")
    args = ap.parse_args()
    for overrides in args.set or [""]:
        results = [run(overrides, s) for s in args.seeds]
        vals = [v for v, _ in results]
        spread = max(vals) - min(vals)
        print(f"{overrides or 'baseline':40s} " + " ".join(f"{v:.4f}({n})" for v, n in results) +
              f" | mean {statistics.mean(vals):.4f} spread {spread:.4f}", flush=True)


if __name__ == "__main__":
    main()
