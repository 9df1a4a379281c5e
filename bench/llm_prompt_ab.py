#!/usr/bin/env python
"""Does the prompt's memory (what was tried, near-misses, combine requests) cut repeated ideas and raise the kept
rate? Real `ar-ray run --proposer llm` on the known-truth stand-in target (bench/standin: 7 real knobs, 4
placebos), with the memory on and off ([llm] idea_memory), against a scripted model on a local OpenAI-compatible
server (tests/llm_server.py), or against a real server (--base-url, e.g. llama.cpp's llama-server).

The scripted model reads its prompt as a model would, no more:
- it proposes one knob change from a fixed pool of 40 ideas (absolute values of the stand-in's 11 knobs), with
  favourites (Zipf weights over a fixed shuffle): left alone it comes back to the same few ideas;
- it skips an idea it can see was tried: in the recent history (descriptions and changed lines), in what runs
  now, and in the what-was-tried summary when the prompt has one; so the memory can only help by showing more;
- asked to combine near-misses, it applies every `+NAME = value` line of the near-misses listed;
- with nothing left to try, it repeats a favourite.

Reported per mode (sums over seeds): proposals, exact duplicates (the driver's `duplicate`: identical code),
repeated ideas (the same set of knob values proposed before in the run, duplicate or not), unusable answers,
trained, kept (proposals whose candidate was accepted), keeps (every accepted change, the policy's own merges of
near-misses included), real wins (keeps whose true metric improved), true gain, combine requests and how many
were kept, prompt tokens.

The code under test is whatever the bench's folder holds: run it from a quiet checkout (or a `git archive` of one),
since `ar-ray run` imports ar_ray, proposers and trainers from there.

    python bench/llm_prompt_ab.py --seeds 2 --experiments 40            # scripted model, ~minutes
    python bench/llm_prompt_ab.py --base-url http://127.0.0.1:8080/v1 --model smollm2 --experiments 10
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH), str(ROOT / "tests")]

from llm_server import LLMServer, reply  # noqa: E402
from policy_real import KNOBS, STANDIN, true_of  # noqa: E402

from ar_ray.ledger import load  # noqa: E402
from proposers.history import COMBINE_TITLE, touched  # noqa: E402

POOL = {
    "LEARNING_RATE": ["0.0005", "0.002", "0.004", "0.008"], "WIDTH": ["32", "128", "256", "512"],
    "DEPTH": ["1", "3", "4", "6", "8"], "WEIGHT_DECAY": ["0.6", "0.1", "0.05", "0.01"],
    "BATCH_SIZE": ["512", "128", "64", "32"], "DROPOUT": ["0.4", "0.1", "0.05", "0.02"],
    "HEADS": ["1", "4", "8", "16"], "CLIP": ["0.5", "2.0", "5.0"], "BETA2": ["0.9", "0.99", "0.999"],
    "WARMUP_STEPS": ["0", "50", "500"], "LOG_EVERY": ["10", "100"],
}
IDEAS = [(k, v) for k, vs in POOL.items() for v in vs]
_VALUE = r"([-+0-9.eE]+)"


class ScriptedModel:
    """A deterministic stand-in for an LLM (see the module's docstring); thread-safe."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        order = list(IDEAS)
        random.Random(1000 + seed).shuffle(order)
        self.weights = {idea: 1.0 / (rank + 1) for rank, idea in enumerate(order)}
        self.lock = threading.Lock()
        self.combines = 0

    def __call__(self, body: dict) -> dict:
        prompt = next(m["content"] for m in body["messages"] if m["role"] == "user")
        current = dict(re.findall(rf"^({'|'.join(KNOBS)}) = {_VALUE}$", _section(prompt, "== THE CURRENT BEST"),
                                  flags=re.MULTILINE))
        if COMBINE_TITLE in prompt:
            wanted = re.findall(rf"^\s+\+({'|'.join(KNOBS)}) = {_VALUE}\s*$", _section(prompt, COMBINE_TITLE),
                                flags=re.MULTILINE)
            changes = [(k, v) for k, v in dict(wanted).items() if current.get(k) != v]
            if changes:
                with self.lock:
                    self.combines += 1
                return _answer("combine: " + ", ".join(f"{k} {v}" for k, v in changes), changes, current)
        seen = self.tried(prompt)
        with self.lock:
            fresh = [i for i in IDEAS if current.get(i[0]) != i[1] and i not in seen]
            pool = fresh or [i for i in IDEAS if current.get(i[0]) != i[1]]
            idea = self.rng.choices(pool, weights=[self.weights[i] for i in pool])[0]
        return _answer(f"set {idea[0]} to {idea[1]}", [idea], current)

    @staticmethod
    def tried(prompt: str) -> set[tuple[str, str]]:
        """The knob values the prompt shows as tried or running: descriptions, changed lines, the summary."""
        seen = set(re.findall(rf"set ({'|'.join(KNOBS)}) to {_VALUE}", prompt))
        seen |= set(re.findall(rf"^\s+\+({'|'.join(KNOBS)}) = {_VALUE}", prompt, flags=re.MULTILINE))
        for line in _section(prompt, "== WHAT WAS TRIED").splitlines():
            m = re.match(rf"- ({'|'.join(KNOBS)}) \(\d+ tried\): (.*)$", line)
            if m:
                seen |= {(m.group(1), v) for v in re.findall(rf"(?:: |, ){_VALUE}", m.group(2))}
        return seen


def _section(prompt: str, title: str) -> str:
    """The text of the prompt's section starting with `title`, up to the next '== ' header."""
    at = prompt.find(title)
    if at < 0:
        return ""
    end = prompt.find("\n== ", at + len(title))
    return prompt[at: end if end >= 0 else len(prompt)]


def _answer(description: str, changes: list[tuple[str, str]], current: dict) -> dict:
    blocks = "".join(f"train.py\n<<<<<<< SEARCH\n{k} = {current[k]}\n=======\n{k} = {v}\n>>>>>>> REPLACE\n\n"
                     for k, v in changes if k in current)
    return reply(f"DESCRIPTION: {description}\n\n{blocks}", prompt_tokens=1500, completion_tokens=80)


def run_one(memory: bool, seed: int, args, url: str, model: str, tmp: Path) -> Path:
    run_dir = tmp / f"{'on' if memory else 'off'}-{seed}"
    cfg = tmp / f"{run_dir.name}.toml"
    sampling = f"\n[llm.sampling]\nmax_tokens = {args.max_tokens}\ntemperature = {args.temperature}\n"
    cfg.write_text(f"[llm]\nmax_tries = {args.max_tries}\nidea_memory = {'true' if memory else 'false'}\n"
                   f"combine_rate = {args.combine_rate}\ncontext_tokens = {args.context_tokens}\n{sampling}"
                   f'[[llm.endpoints]]\nmodel = "{model}"\nbase_url = "{url}"\n'
                   "price_prompt_per_mtok = 0\nprice_completion_per_mtok = 0\n")
    env = {**os.environ, "AR_NOISE": str(args.noise), "AR_RUN_SECONDS": str(args.run_seconds)}
    cmd = [sys.executable, "-m", "ar_ray.cli.main", "run", "--proposer", "llm", "--config", str(cfg),
           "--target", str(STANDIN), "--run-dir", str(run_dir), "--seed", str(seed),
           "--max-experiments", str(args.experiments), "--trainers", str(args.trainers), "--proposers", "1",
           "--cpus-per-trainer", "0.5", "--sandbox", "none", "--budget", "1",
           "--max-unusable-in-a-row", str(args.max_unusable)]
    if args.time_limit:
        cmd += ["--time-limit", args.time_limit]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600, cwd=ROOT)
    if out.returncode != 0 and not (run_dir / "ledger").exists():
        raise SystemExit(f"ar-ray run failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return run_dir


def score(run_dir: Path) -> dict:
    df = load(run_dir)
    props = df[df["proposer"].astype(str).str.startswith("llm")].sort_values("seq")
    ideas, repeated = set(), 0
    for diff in props["diff"].fillna(""):
        _, values = touched(diff)
        key = frozenset(values)
        if key and key in ideas:
            repeated += 1
        ideas.add(key)
    gid = df["group_id"].fillna(df["experiment_id"])
    keep_groups = set(gid[df["decision"] == "keep"])
    kept = props[props["experiment_id"].isin(keep_groups)]
    combos = props[props["description"].fillna("").str.startswith("combine")]
    start = true_of({"train.py": (STANDIN / "train.py").read_text()})
    prev, real = start, 0
    for _, r in df[df["decision"] == "keep"].sort_values("seq").iterrows():
        t = true_of(dict(r["files"]))
        real += t < prev - 1e-12
        prev = t
    return {"proposals": len(props), "duplicates": int((props["status"] == "duplicate").sum()),
            "repeated": repeated, "unusable": int(props["status"].isin(["invalid_edit", "proposer_error"]).sum()),
            "trained": int((props["decision"] != "skip").sum()), "kept": len(kept),
            "keeps": int((df["decision"] == "keep").sum()), "real": int(real),
            "gain": start - prev, "combines": len(combos),
            "combines_kept": int(combos["experiment_id"].isin(keep_groups).sum()),
            "tokens": int(props["prompt_tokens"].fillna(0).sum())}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--experiments", type=int, default=40, help="--max-experiments of each run")
    ap.add_argument("--trainers", type=int, default=2)
    ap.add_argument("--noise", type=float, default=0.01)
    ap.add_argument("--run-seconds", type=float, default=0.2, help="AR_RUN_SECONDS of the stand-in")
    ap.add_argument("--combine-rate", type=float, default=0.2)
    ap.add_argument("--max-tries", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=400)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--context-tokens", type=int, default=32000)
    ap.add_argument("--max-unusable", type=int, default=50, help="--max-unusable-in-a-row of each run")
    ap.add_argument("--time-limit", default=None, help="--time-limit of each run (e.g. 15m; for a slow real model)")
    ap.add_argument("--base-url", default=None, help="a real server instead of the scripted model")
    ap.add_argument("--model", default="scripted-model")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="ar-prompt-ab-"))
    results: dict[str, list[dict]] = {"on": [], "off": []}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for memory in (True, False):
            if args.base_url:
                run_dir = run_one(memory, seed, args, args.base_url, args.model, tmp)
            else:
                with LLMServer() as server:
                    server.responder = ScriptedModel(seed)
                    run_dir = run_one(memory, seed, args, server.url, args.model, tmp)
            r = score(run_dir)
            results["on" if memory else "off"].append(r)
            print(f"memory {'on ' if memory else 'off'} seed {seed}: {r}  ({run_dir})", file=sys.stderr)
    model = f"{args.model} at {args.base_url}" if args.base_url else "the scripted model"
    print(f"\n{model}; bench/standin (noise {args.noise}), confirm mode, {args.seeds} seeds x "
          f"--max-experiments {args.experiments}, {args.trainers} trainers, combine_rate {args.combine_rate}; "
          "sums over seeds\n")
    cols = ["proposals", "duplicates", "repeated", "unusable", "trained", "kept", "keeps", "real", "gain", "combines",
            "combines_kept", "tokens"]
    print("| prompt memory | " + " | ".join(cols) + " | duplicate rate | repeated-idea rate | kept per proposal "
          "| keeps per proposal |")
    print("|" + "---|" * (len(cols) + 4))
    for mode, rs in results.items():
        tot = {c: sum(r[c] for r in rs) for c in cols}
        n = tot["proposals"] or 1
        cells = [f"{tot[c]:.4f}" if c == "gain" else str(tot[c]) for c in cols]
        print(f"| {mode} | " + " | ".join(cells) + f" | {tot['duplicates'] / n:.1%} | {tot['repeated'] / n:.1%} "
              f"| {tot['kept'] / n:.3f} | {tot['keeps'] / n:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
