"""The LLM-free mutate proposer: real, varied, applicable edits; never the seed or the evaluation."""

from __future__ import annotations

import ast

from ar_ray.engine.config import default_target
from ar_ray.types import Baseline
from proposers.mutate import MutateProposer, applicable, find_knobs

SOURCE = '''\
import os
SEED = 1234
EVAL_TOKENS = 5000
LR = 3e-4            # learning rate
WIDTH = 256
DEPTH = 4
NEG = -0.5
IGNORE_INDEX = -100
BETA2 = 0.95
USE_BIAS = False
ACT = "relu"         # choices: relu, gelu, silu
NAME = "free text"   # not a knob: no choices
FROZEN = 7           # fixed
def f():
    INNER = 3
'''


def proposals(source: str, n: int, seed: int = 0):
    p = MutateProposer("mutate-0", ("train.py",), seed=seed)
    p.update(Baseline(version=0, files={"train.py": source}))
    return [p.propose() for _ in range(n)]


def test_knobs_found_and_protected_names_skipped():
    names = {k.name for k in find_knobs("train.py", SOURCE)}
    assert names == {"LR", "WIDTH", "DEPTH", "NEG", "IGNORE_INDEX", "BETA2", "USE_BIAS", "ACT"}


def test_edits_are_applicable_varied_and_touch_only_literals():
    out = proposals(SOURCE, 60)
    assert all(p.status == "ok" for p in out), [p.error for p in out if p.status != "ok"]
    assert len({p.description for p in out}) >= 40
    for p in out:
        new = p.files["train.py"]
        ast.parse(new)
        assert new != SOURCE and p.lines_added == p.lines_removed <= 2
        old_lines, new_lines = SOURCE.splitlines(), new.splitlines()
        for a, b in zip(old_lines, new_lines):
            if a != b:  # only the literal changed: the name and the comment survive
                assert a.split("=")[0] == b.split("=")[0]
                assert a.partition("#")[2] == b.partition("#")[2]
        for protected in ("SEED = 1234", "EVAL_TOKENS = 5000", 'NAME = "free text"', "FROZEN = 7", "    INNER = 3"):
            assert protected in new
    seen = " ".join(p.description for p in out)
    assert "USE_BIAS False -> True" in seen and "ACT 'relu' ->" in seen and "WIDTH 256 -> " in seen


def test_values_move_sensibly():
    out = proposals(SOURCE, 200, seed=1)
    values = {}
    for p in out:
        tree = ast.parse(p.files["train.py"])
        for node in tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                values.setdefault(node.targets[0].id, set()).add(ast.literal_eval(node.value))
    assert values["WIDTH"] <= {256, 512, 128}
    assert all(d >= 1 for d in values["DEPTH"]) and values["DEPTH"] - {4} <= {3, 5}
    assert all(v < 0 for v in values["NEG"])
    assert values["IGNORE_INDEX"] - {-100} == {-200, -50}  # large negative integers keep their sign when halved
    assert values["ACT"] <= {"relu", "gelu", "silu"} and len(values["ACT"]) == 3
    assert len(values["LR"]) > 3 and all(0 < v < 1e-3 for v in values["LR"])
    assert len(values["BETA2"]) > 3 and all(0.5 < v < 1 for v in values["BETA2"])  # never past 1


def test_the_default_gpt_target_has_knobs_to_mutate():
    source = (default_target() / "train.py").read_text()
    names = {k.name for k in find_knobs("train.py", source)}
    assert {"DEPTH", "MATRIX_LR", "WARMDOWN_FRAC"} <= names
    assert not any("SEED" in n for n in names)
    for p in proposals(source, 20):
        assert p.status == "ok"
        compile(p.files["train.py"], "train.py", "exec")


def test_no_knobs_is_a_clear_proposer_error():
    (p,) = proposals("print('hello')\n", 1)
    assert p.status == "proposer_error" and "UPPER_CASE = literal" in p.error


def test_knobs_of_the_other_hardware_are_left_alone():
    """On CPU trainers a GPU_* knob changes nothing (a wasted, deterministic run); on GPU its CPU twin does not."""
    files = {"train.py": (default_target() / "train.py").read_text()}
    knobs = find_knobs("train.py", files["train.py"])
    names = {k.name for k in knobs}
    gpu_only = {n for n in names if n.startswith("GPU_")}
    twins = {n[4:] for n in gpu_only} & names
    assert {"GPU_DEPTH", "DEPTH"} <= names and twins
    assert {k.name for k in applicable(knobs, "cpu")} == names - gpu_only
    assert {k.name for k in applicable(knobs, "gpu")} == names - twins
    assert applicable(knobs, None) == knobs
    p = MutateProposer("mutate-0", ("train.py",), seed=1, hardware="cpu")
    for version in range(40):
        description = p.propose([], [], Baseline(version, files)).description
        assert "GPU_" not in description, description
