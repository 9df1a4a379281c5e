"""How long the "closest lines" hint takes when an LLM's SEARCH block is not found in the file.

Blocks of 10, 40 and 120 lines are cut from trainers/gpt/train.py with every third line changed (a near
miss, the slow case), and edits._closest is timed on each. Run from the repository root:

    python bench/edit_miss.py [--old PATH_TO_AN_OLDER_edits.py]
"""

import argparse
import importlib.util
import random
import sys
import time

from ar_ray.code import edits


def load(path: str):
    spec = importlib.util.spec_from_file_location("edits_other", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["edits_other"] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", help="an older ar_ray/code/edits.py to time side by side (e.g. from git show)")
    ap.add_argument("--sizes", default="10,40,120")
    args = ap.parse_args()
    versions = [("now", edits)] + ([("old", load(args.old))] if args.old else [])
    src = open("trainers/gpt/train.py").read().splitlines()
    rng = random.Random(0)
    for n in map(int, args.sizes.split(",")):
        i = rng.randrange(0, len(src) - n)
        block = [line.replace("e", "E", 1) if k % 3 == 0 else line for k, line in enumerate(src[i:i + n])]
        for name, module in versions:
            t = time.perf_counter()
            hint = module._closest(src, block).splitlines()[0]
            print(f"{n:>4} lines  {name:>3}  {time.perf_counter() - t:8.3f} s  {hint} (block starts at line {i + 1})")


if __name__ == "__main__":
    main()
