"""The target contract: TOML declaration, upstream autoresearch layout, overrides, clear errors."""

from __future__ import annotations

import pytest

from ar_ray.config import default_target
from ar_ray.target import TargetError, format_command, load_target, materialize, tampered_files
from trainers import outcome

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


@pytest.mark.parametrize("toml, message", [
    ('[target]\neditable = ["model.py"]', "editable file 'model.py' is missing"),
    ('[target]\nreadonly = ["data.bin"]', "read-only file 'data.bin'"),
    ('[target]\ndirection = "down"', "direction must be 'min' or 'max'"),
    ('[target]\nmetric_pattern = "val_bpb: \\\\S+"', "needs one capture group"),
    ('[target]\nbudget = 300', "unknown key(s) ['budget']"),
    ('[target]\nbudget_seconds = 0', "budget_seconds must be positive"),
    ('[target\n', "is not valid TOML"),
    ('[target]\nreadonly = ["train.py"]', "both as editable and read-only"),
])
def test_bad_declarations_say_what_to_do(tmp_path, toml, message):
    root = upstream_layout(tmp_path / "t")
    (root / "ar-ray.toml").write_text(toml)
    with pytest.raises(TargetError) as e:
        load_target(root)
    assert message in str(e.value)


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
    assert t.editable == ("train.py",) and "prepare.py" in t.readonly and t.result_file and t.setup
