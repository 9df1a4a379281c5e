"""The target contract: TOML declaration, upstream autoresearch layout, overrides, clear errors."""

from __future__ import annotations

import dataclasses

import pytest

from ar_ray.engine.config import default_target
from ar_ray.target import (
    FIELDS,
    PLACEHOLDERS,
    Target,
    TargetError,
    format_command,
    load_target,
    materialize,
    tampered_files,
)
from ar_ray.types import Candidate
from trainers import outcome
from trainers.sandbox import Sandbox
from trainers.trainer import Trainer

UPSTREAM_SUMMARY = """\
step 00953 (100.0%) | loss: 3.012 | lrm: 0.00 | dt: 310ms | tok/sec: 1,690,000 | mfu: 39.8% | epoch: 1 | remaining: 0s
---
val_bpb:          0.997900
training_seconds: 300.1
total_seconds:    325.9
peak_vram_mb:     45060.2
mfu_percent:      39.80
total_tokens_M:   499.6
num_steps:        953
num_params_M:     50.3
depth:            8
"""


def upstream_layout(root):
    """The files of karpathy/autoresearch, with no ar-ray.toml."""
    root.mkdir()
    for name, text in {"train.py": "print('x')\n", "prepare.py": "TIME_BUDGET = 300\n", "program.md": "# research\n",
                       "pyproject.toml": "[project]\nname='autoresearch'\n", "README.md": "hi\n"}.items():
        (root / name).write_text(text)
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/master\n")
    return root


def test_upstream_layout_runs_unchanged(tmp_path):
    t = load_target(upstream_layout(tmp_path / "autoresearch"))
    assert t.editable == ("train.py",)
    assert set(t.readonly) == {"prepare.py", "program.md", "pyproject.toml", "README.md"}  # never .git
    assert t.metric == "val_bpb" and t.direction == "min" and t.program == "program.md"
    assert t.budget_seconds == 300 and t.hard_timeout == 660
    assert outcome.parse_metric(UPSTREAM_SUMMARY, t.metric_pattern) == 0.9979
    summary = outcome.parse_summary(UPSTREAM_SUMMARY)
    assert summary["peak_vram_mb"] == "45060.2" and summary["mfu_percent"] == "39.80" and summary["depth"] == "8"
    assert "step 00953 (100.0%) | loss" not in summary


def test_toml_declaration_and_cli_overrides(tmp_path):
    root = upstream_layout(tmp_path / "t")
    (root / "ar-ray.toml").write_text('[target]\nname = "mine"\nmetric = "accuracy"\ndirection = "max"\n'
                                      'budget_seconds = 30\ncommand = "{python} train.py --seed {seed}"\n')
    t = load_target(root, budget_seconds=10.0, direction=None)
    assert t.name == "mine" and t.direction == "max" and t.budget_seconds == 10.0 and t.hard_timeout == 80
    assert t.metric_pattern == r"^accuracy:\s*(\S+)" and t.better(0.9, 0.8) and not t.better(0.7, 0.8)
    assert format_command(t.command, seed=7)[1:] == ["train.py", "--seed", "7"]
    with pytest.raises(TargetError, match="unknown placeholder"):
        format_command("{python} train.py {nope}")


PLACEHOLDER_HINT = "the placeholders are {python}, {seed}, {budget_seconds}, {budget_tokens}, {result_file}, {run_dir}"


@pytest.mark.parametrize("toml, message", [
    ('[target]\neditable = ["model.py"]', "editable file 'model.py' is missing"),
    ('[target]\nreadonly = ["data.bin"]', "read-only file 'data.bin'"),
    ('[target]\ndirection = "down"', "direction must be 'min' or 'max'"),
    ('[target]\nmetric_pattern = "val_bpb: \\\\S+"', "needs one capture group"),
    ('[target]\nbudget = 300', "unknown key(s) ['budget']"),
    ('[target\n', "is not valid TOML"),
    ('[target]\nreadonly = ["train.py"]', "both as editable and read-only"),
    # wrong value types: which key, what was given, what to write
    ('[target]\nbudget_seconds = 0', "budget_seconds must be a positive number of seconds, got 0; write e.g. budget_seconds = 300"),
    ('[target]\nbudget_seconds = "abc"', "budget_seconds must be a positive number of seconds, got 'abc'; write e.g. budget_seconds = 300"),
    ('[target]\nbudget_seconds = [1]', "budget_seconds must be a positive number of seconds, got [1]"),
    ('[target]\nbudget_seconds = true', "budget_seconds must be a positive number of seconds, got True"),
    ('[target]\nbudget_seconds = nan', "budget_seconds must be a positive number of seconds, got nan"),
    ('[target]\ncpu_budget_seconds = -5', "cpu_budget_seconds must be a positive number of seconds, got -5; write e.g. cpu_budget_seconds = 20"),
    ('[target]\ntimeout_seconds = inf', "timeout_seconds must be a positive number of seconds, got inf"),
    ('[target]\nbudget_tokens = "1e5"', "budget_tokens must be a positive whole number of tokens, got '1e5'; write e.g. budget_tokens = 50_000_000"),
    ('[target]\nbudget_tokens = 1e5', "budget_tokens must be a positive whole number of tokens, got 100000.0"),
    ('[target]\nbudget_tokens = 0', "budget_tokens must be a positive whole number of tokens, got 0"),
    ('[target]\nmetric = 5', "metric must be a string, got 5; write e.g. metric = \"val_bpb\""),
    ('[target]\nname = 3', "name must be a string, got 3; write e.g. name = \"gpt\""),
    ('[target]\ncommand = 5', "command must be a command line, got 5; write e.g. command = \"{python} train.py\""),
    ('[target]\nresult_file = "no"', "result_file must be true or false, got 'no'; write e.g. result_file = true"),
    ('[target]\nnetwork = 1', "network must be true or false, got 1"),
    ('[target]\neditable = 5', "editable must be a list of file names, got 5; write e.g. editable = [\"train.py\"]"),
    ('[target]\neditable = []', "editable is empty; list the file(s) proposers may change"),
    ('[target]\nreadonly = ["prepare.py", 2]', "readonly must be a list of file names, got ['prepare.py', 2]"),
    ('[target]\ndata = [["a"]]', "data must be a list of paths, got [['a']]"),
    ('[target]\nenv = "FOO=1"', "env must be a table of NAME = value strings, got 'FOO=1'; write e.g. env = { OMP_NUM_THREADS = \"4\" }"),
    ('[target]\nenv = { A = [1] }', "env must be a table of NAME = value strings, got {'A': [1]}"),
    ('[target]\nenv = { A = { B = "1" } }', "env must be a table of NAME = value strings"),
    ('[target]\nenv = { A = true }', "env must be a table of NAME = value strings, got {'A': True}"),
    ('[target]\nenv = { "A=B" = "1" }', "env must be a table of NAME = value strings"),
    ('[target]\nmetric_pattern = 1', "metric_pattern must be a regular expression, got 1"),
    ('[target]\nprogram = false', "program must be a file name, got False"),
    ('[target]\nsetup = ["a"]', "setup must be a command line, got ['a']"),
    # commands: the placeholders the trainer fills, quoting
    ('[target]\ncommand = "{python} train.py --out {out_dir}"',
     "command '{python} train.py --out {out_dir}' uses unknown placeholder {out_dir}; " + PLACEHOLDER_HINT),
    ('[target]\nsetup = "{python} prepare.py {data}"', "setup '{python} prepare.py {data}' uses unknown placeholder {data}"),
    ('[target]\ncommand = "{python} train.py {}"', "uses unknown placeholder {}"),
    ('[target]\ncommand = "{python} train.py {run_dir.name}"', "uses unknown placeholder {run_dir.name}"),
    ("[target]\ncommand = '{python} -c \"d = {1: 2}\"'", "uses unknown placeholder {1}; " + PLACEHOLDER_HINT
     + "; write {{ and }} for a literal brace"),
    ('[target]\ncommand = "{python} train.py {seed"', "has a stray brace"),
    ('[target]\ncommand = "{python} train.py }"', "has a stray brace"),
    ("[target]\ncommand = '{python} train.py \"--x'", "cannot be split into arguments (No closing quotation); close the quote"),
    ('[target]\ncommand = "  "', "command is empty; set 'command' in ar-ray.toml, e.g. command = \"{python} train.py\""),
    ('[target]\nsetup = " "', "setup is empty"),
    # the table itself
    ('[targets]\nname = "x"', "unknown table(s) or key(s) ['targets'] at the top level; ar-ray reads only the tables [target] and [knobs]"),
    # the search space: [knobs]
    ('[knobs]\nlr = 5', "[knobs] lr must be a range [lo, hi] or a list of the values to try, got 5; write e.g. [knobs] "
     "learning_rate = [1e-4, 1e-2]"),
    ('[knobs]\nlr = [0.1, 0.01]', "[knobs] lr: the range [0.1, 0.01] is empty; write the smaller bound first, e.g. "
     "lr = [0.01, 0.1]"),
    ('[knobs]\nlr = { range = [1, "x"] }', "[knobs] lr: a range is two numbers [lo, hi], got [1, 'x']"),
    ('[knobs]\nlr = { values = [1, 2] }', "[knobs] lr: a table must be { choices = [...] } or { range = [lo, hi] }"),
    ('[knobs]\nact = ["relu"]', "[knobs] act lists 1 value(s); give at least two to choose between"),
    ('[knobs]\nact = ["relu", 2, 3]', "[knobs] act: choices mix types"),
    ('[knobs]\nact = ["relu", "relu"]', "[knobs] act lists a value twice"),
    ('[knobs]\nact = [["a"], ["b"]]', "[knobs] act: choices must be strings, numbers or booleans"),
    ('[knobs]\noff = "eval_*"\noff2 = 3', "[knobs] off2 must be a range"),
    ('[knobs]\noff = [1]', "[knobs] off must be a list of names (or * patterns) mutate leaves alone, got [1]"),
    ('knobs = 3', "knobs must be the table [knobs], got knobs = 3"),
    ('[target]\nknobs = { lr = [1, 2] }', "knobs is a table of its own: write [knobs] on a line of its own"),
    ('name = "x"\n[target]\n', "unknown table(s) or key(s) ['name'] at the top level"),
    ('target = 5', "target must be the table [target], got target = 5"),
])
def test_bad_declarations_say_what_to_do(tmp_path, toml, message):
    root = upstream_layout(tmp_path / "t")
    (root / "ar-ray.toml").write_text(toml)
    with pytest.raises(TargetError) as e:
        load_target(root)
    assert message in str(e.value)
    assert "\n" not in str(e.value) or "TOML" in str(e.value)  # one line


def test_good_values_load_as_declared(tmp_path):
    root = upstream_layout(tmp_path / "t")
    (root / "ar-ray.toml").write_text('[target]\nbudget_seconds = 30\ncpu_budget_seconds = 2.5\nbudget_tokens = 1_000\n'
                                      'timeout_seconds = 90\nresult_file = true\nnetwork = false\neditable = "train.py"\n'
                                      'data = ["~/d"]\nenv = { A = "x", B = 2, C = 0.5 }\n'
                                      'setup = "{python} prepare.py --out {run_dir} --tokens {budget_tokens:d}"\n'
                                      """command = '{python} -c "print({{1: 2}})" {seed!s}'\n""")
    t = load_target(root)
    assert (t.budget_seconds, t.cpu_budget_seconds, t.budget_tokens, t.timeout_seconds) == (30, 2.5, 1000, 90)
    assert t.result_file is True and t.network is False and t.editable == ("train.py",) and t.data == ("~/d",)
    assert t.env == {"A": "x", "B": "2", "C": "0.5"}
    assert format_command(t.command, seed=3)[1:] == ["-c", "print({1: 2})", "3"]
    # CLI overrides arrive typed (floats, ints, tuples) and are checked like the file's values
    t = load_target(root, budget_seconds=10.0, cpu_budget_seconds=10.0, budget_tokens=5, timeout_seconds=20.0,
                    data=("/x",), command="{python} train.py", metric=None)
    assert (t.budget_seconds, t.budget_tokens, t.timeout_seconds, t.data) == (10.0, 5, 20.0, ("/x",))
    with pytest.raises(TargetError, match="budget_tokens must be a positive whole number of tokens, got 0"):
        load_target(root, budget_tokens=0)


def test_knobs_declare_the_search_space(tmp_path):
    root = upstream_layout(tmp_path / "t")
    (root / "ar-ray.toml").write_text('[target]\nname = "x"\n\n[knobs]\nlearning_rate = [1e-4, 1e-2]\n'
                                      'n_layer = [2, 4, 6]\nn_head = { choices = [4, 8] }\nwd = { range = [0, 0.1] }\n'
                                      'act = ["relu", "gelu"]\nbias = [true, false]\noff = ["eval_*", "wandb_log"]\n')
    t = load_target(root)
    assert t.knobs == {"learning_rate": ("range", 1e-4, 1e-2), "n_layer": ("choices", (2, 4, 6)),
                       "n_head": ("choices", (4, 8)), "wd": ("range", 0, 0.1), "act": ("choices", ("relu", "gelu")),
                       "bias": ("choices", (True, False))}
    assert t.knobs_off == ("eval_*", "wandb_log")
    assert load_target(upstream_layout(tmp_path / "u")).knobs == {}


def test_every_target_key_is_checked():
    internal = {"root", "readonly_hashes", "contents", "knobs", "knobs_off"}  # knobs: the [knobs] table
    assert set(FIELDS) == {f.name for f in dataclasses.fields(Target)} - internal


def test_the_trainer_fills_every_placeholder(tmp_path):
    """load_target accepts exactly PLACEHOLDERS; the trainer must give each a value, in setup and in the run."""
    every = " ".join(f"{{{p}}}" for p in PLACEHOLDERS)
    root = upstream_layout(tmp_path / "t")
    (root / "train.py").write_text("import sys\nprint('val_bpb:', len(sys.argv))\n")
    (root / "ar-ray.toml").write_text(f'[target]\nsetup = "{{python}} -c pass {every}"\n'
                                      f'command = "{{python}} train.py {every}"\nbudget_tokens = 100\n')
    t = load_target(root)
    trainer = Trainer(t, str(tmp_path / "work"), name="t-test", grace_seconds=0.3, box=Sandbox(mode="none"))
    res = trainer.run(Candidate(experiment_id="exp-all", base_version=0, files=t.read_editable()))
    assert res.status == "ok" and res.metric == 1 + len(PLACEHOLDERS), res.error_tail


def test_missing_folder(tmp_path):
    with pytest.raises(TargetError, match="does not exist"):
        load_target(tmp_path / "nope")


def test_materialize_and_tamper_check(tmp_path):
    t = load_target(upstream_layout(tmp_path / "t"))
    run = tmp_path / "run"
    materialize(t, {"train.py": "print('edited')\n"}, run)
    assert (run / "train.py").read_text() == "print('edited')\n"
    assert (run / "prepare.py").read_text() == "TIME_BUDGET = 300\n" and not (run / ".git").exists()
    assert tampered_files(t, run) == []
    (run / "prepare.py").write_text("TIME_BUDGET = 3000\n")
    (run / "program.md").unlink()
    assert tampered_files(t, run) == ["prepare.py", "program.md"]


def test_the_bundled_gpt_target_loads():
    t = load_target(default_target())
    assert t.editable == ("train.py",) and "prepare.py" in t.readonly and t.setup
    # the metric comes from the trusted evaluation, not from a result file the run could write
    assert t.evaluate and t.heldout and not t.result_file and {"prepare.py", "modelfile.py"} <= set(t.readonly)
