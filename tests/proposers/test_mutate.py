"""The LLM-free mutate proposer: real, varied, applicable edits; never the seed or the evaluation."""

from __future__ import annotations

import ast

from ar_ray.engine.config import default_target
from ar_ray.types import Baseline
import json
import random
import tomllib

import pytest
import yaml

from proposers.mutate import Knob, MutateProposer, NoKnobs, applicable, find_knobs, knobs_for, mutate_value

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


def proposals(source: str, n: int, seed: int = 0, path: str = "train.py", **options):
    p = MutateProposer("mutate-0", (path,), seed=seed, **options)
    p.update(Baseline(version=0, files={path: source}))
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
    assert p.status == "proposer_error" and "no mutable hyperparameters found in the editable file(s) train.py" in p.error
    # it says what mutate looks for and how to declare knobs instead
    assert "top-level `name = literal` assignments" in p.error and ".yaml/.yml/.json/.toml" in p.error
    assert "[knobs]" in p.error and "learning_rate = [1e-4, 1e-2]" in p.error and "\n" not in p.error


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


# ---- any reasonable config: lowercase Python, YAML, JSON, TOML ----

NANOGPT_STYLE = """\
# train a miniature character-level shakespeare model
out_dir = 'out-shakespeare-char'
eval_interval = 250 # keep frequent because we'll overfit
eval_iters = 200
log_interval = 10 # don't print too too often
always_save_checkpoint = False
wandb_log = False # override via command line if you like
dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256 # context of up to 256 previous characters
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2
learning_rate = 1e-3 # with baby networks can afford to go a bit higher
max_iters = 5000
lr_decay_iters = 5000 # make equal to max_iters usually
min_lr = 1e-4 # learning_rate / 10 usually
beta2 = 0.99 # make a bit bigger because number of tokens per iter is small
warmup_iters = 100 # not super necessary potentially
device = 'cpu'
compile = False
iter_num = 0
while iter_num < 3:
    iter_num += 1
"""


def test_lowercase_python_config_is_tuned_but_not_its_plumbing():
    names = {k.name for k in find_knobs("config/train.py", NANOGPT_STYLE)}
    assert names == {"gradient_accumulation_steps", "batch_size", "block_size", "n_layer", "n_head", "n_embd",
                     "dropout", "learning_rate", "lr_decay_iters", "min_lr", "beta2", "warmup_iters"}
    out = proposals(NANOGPT_STYLE, 40, path="config/train.py")
    assert all(p.status == "ok" for p in out), [p.error for p in out]
    for p in out:
        new = p.files["config/train.py"]
        changed = [(a, b) for a, b in zip(NANOGPT_STYLE.splitlines(), new.splitlines()) if a != b]
        assert 1 <= len(changed) <= 2
        for a, b in changed:  # one value replaced in place: the name and the comment survive
            assert a.split("=")[0] == b.split("=")[0] and a.partition("#")[2] == b.partition("#")[2]


def test_values_move_by_type():
    rng = random.Random(0)

    def moves(value, **kw):
        return {mutate_value(Knob("f", "x", value, 1, 0, 1, **kw), rng) for _ in range(200)}

    assert moves(64) == {32, 128} and moves(8) == {4, 16}  # powers of two stay powers of two
    assert moves(6) == {5, 7} and moves(1) == {2}  # small counts step; a positive count stays positive
    assert moves(True) == {False}
    lrs = moves(1e-3)
    assert len(lrs) > 3 and all(5e-4 <= v <= 2e-3 for v in lrs)  # a log-scale factor
    assert moves("relu", choices=("relu", "gelu", "silu")) == {"gelu", "silu"}
    with pytest.raises(ValueError):
        mutate_value(Knob("f", "x", "free text", 1, 0, 1), rng)  # a string without a set is never invented
    # a declared range holds whatever the step: ints stay ints
    assert moves(2, lo=1, hi=3) <= {1, 3} and all(1e-4 <= v <= 1e-2 for v in moves(1e-3, lo=1e-4, hi=1e-2))
    assert all(isinstance(v, int) and 2 <= v <= 5 for v in moves(4, lo=2, hi=5.5))


YAML_CONFIG = """\
# model settings
model:
  n_layer: 4            # depth
  d_model: 128
  activation: gelu      # choices: gelu, relu
  name: "tiny"
optim:
  lr: 3.0e-4
  weight_decay: 0.1
  use_amp: false
seed: 42
log_every: 10
data_dir: ./data
"""


def test_yaml_values_are_edited_in_place():
    names = {k.name: k.value for k in find_knobs("config.yaml", YAML_CONFIG)}
    assert names == {"model.n_layer": 4, "model.d_model": 128, "model.activation": "gelu", "optim.lr": 3e-4,
                     "optim.weight_decay": 0.1, "optim.use_amp": False}
    out = proposals(YAML_CONFIG, 40, path="config.yaml")
    assert all(p.status == "ok" for p in out), [p.error for p in out]
    seen = set()
    for p in out:
        new = p.files["config.yaml"]
        before, after = yaml.safe_load(YAML_CONFIG), yaml.safe_load(new)
        assert after["seed"] == 42 and after["model"]["name"] == "tiny" and after["data_dir"] == "./data"
        for a, b in zip(YAML_CONFIG.splitlines(), new.splitlines()):
            if a != b:
                assert a.split(":")[0] == b.split(":")[0] and a.partition("#")[2] == b.partition("#")[2]
        for section in ("model", "optim"):
            for k, v in after[section].items():
                assert type(v) is type(before[section][k])  # PyYAML reads every new value with its old type
                if v != before[section][k]:
                    seen.add(f"{section}.{k}")
    assert {"model.activation", "optim.use_amp", "optim.lr"} <= seen


def test_json_and_toml_configs_are_tuned():
    source = '{\n  "lr": 0.001,\n  "hidden": 64,\n  "seed": 1,\n  "act": "relu",\n  "layers": [1, 2]\n}\n'
    assert {k.name for k in find_knobs("hp.json", source)} == {"lr", "hidden"}
    for p in proposals(source, 10, path="hp.json"):
        assert p.status == "ok" and json.loads(p.files["hp.json"])["seed"] == 1
    source = ('title = "x"\nlr = 1e-3  # learning rate\n\n[model]\nwidth = 256\nuse_bias = true\n'
              'act = "relu"  # choices: relu, gelu\n\n[[runs]]\nsteps = 3\n')
    assert {k.name: k.value for k in find_knobs("cfg.toml", source)} == {
        "lr": 1e-3, "model.width": 256, "model.use_bias": True, "model.act": "relu"}
    for p in proposals(source, 20, path="cfg.toml"):
        assert p.status == "ok"
        doc = tomllib.loads(p.files["cfg.toml"])
        assert doc["runs"] == [{"steps": 3}] and "# learning rate" in p.files["cfg.toml"]


def test_declared_knobs_take_precedence_over_detection():
    space = {"learning_rate": ("range", 1e-4, 2e-3), "n_head": ("choices", (4, 8)), "device": ("choices", ("cpu", "mps"))}
    knobs = knobs_for({"c.py": NANOGPT_STYLE}, ("c.py",), space)
    assert sorted(k.name for k in knobs) == ["device", "learning_rate", "n_head"]  # only the declared ones
    out = proposals(NANOGPT_STYLE, 40, path="c.py", space=space)
    assert all(p.status == "ok" for p in out)
    values = {}
    for p in out:
        ns: dict = {}
        exec(p.files["c.py"].split("iter_num = 0")[0], ns)
        for name in space:
            values.setdefault(name, set()).add(ns[name])
    assert values["n_head"] <= {6, 4, 8} and values["device"] <= {"cpu", "mps"} and len(values["device"]) == 2
    assert all(1e-4 <= v <= 2e-3 for v in values["learning_rate"]) and len(values["learning_rate"]) > 2
    # off: detection leaves these alone
    names = {k.name for k in knobs_for({"c.py": NANOGPT_STYLE}, ("c.py",), off=("n_*", "dropout"))}
    assert names and not any(n.startswith("n_") for n in names) and "dropout" not in names
    with pytest.raises(NoKnobs, match=r"knob\(s\) 'lr' declared under \[knobs\] in ar-ray.toml are not"):
        knobs_for({"c.py": NANOGPT_STYLE}, ("c.py",), {"lr": ("range", 0.1, 1.0)})
    with pytest.raises(NoKnobs, match="declared as a range"):
        knobs_for({"c.py": NANOGPT_STYLE}, ("c.py",), {"dataset": ("range", 0.1, 1.0)})
