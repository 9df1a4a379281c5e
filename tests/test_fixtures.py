"""Real public training code as targets (tests/fixtures/*, each with its license and ORIGIN.md): mutate edits their
config files, and a short real `ar-ray run` on each ends with runs `ok` and a finite metric."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from ar_ray.cli.main import main
from ar_ray.ledger import store as ledger
from ar_ray.target import load_target
from ar_ray.types import Baseline
from proposers.mutate import MutateProposer

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NANOGPT = FIXTURES / "nanogpt"
CONFIG = "config/train_tiny_char.py"


def test_nanogpt_lowercase_config_is_what_mutate_edits():
    target = load_target(NANOGPT)
    assert target.editable == (CONFIG,) and target.knobs_off == ("n_head",)
    p = MutateProposer("mutate-0", target.editable, seed=0, hardware="cpu", space=target.knobs, off=target.knobs_off)
    knobs = {k.name for k in p.knobs(target.read_editable())}
    assert {"learning_rate", "n_layer", "n_embd", "dropout", "beta2", "batch_size"} <= knobs
    assert not knobs & {"n_head", "max_iters", "eval_iters", "eval_interval", "log_interval", "device", "compile",
                        "wandb_log", "always_save_checkpoint", "out_dir"}
    p.update(Baseline(0, target.read_editable()))
    for proposal in (p.propose() for _ in range(10)):
        assert proposal.status == "ok", proposal.error
        old, new = target.read_editable()[CONFIG].splitlines(), proposal.files[CONFIG].splitlines()
        changed = [(a, b) for a, b in zip(old, new) if a != b]
        assert len(old) == len(new) and 1 <= len(changed) <= 2, proposal.diff
        assert all(a.split("=")[0] == b.split("=")[0] and a.partition("#")[2] == b.partition("#")[2]
                   for a, b in changed)


def short_run(target: Path, run_dir: Path):
    """A real `ar-ray run` of 2 experiments on 2 trainers: every run ok with a finite metric; the screens' rows."""
    r = CliRunner().invoke(main, ["run", "--target", str(target), "--run-dir", str(run_dir), "--trainers", "2",
                                  "--proposers", "1", "--max-experiments", "2", "--acceptance", "greedy"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    df = ledger.load(run_dir)
    ran = df[df.decision != "skip"]
    assert len(ran) == 3 and set(ran.status) == {"ok"}, df[["experiment_id", "status", "error"]]
    assert all(math.isfinite(m) and 0 < m < 10 for m in ran.metric)
    return ran[ran.role == "screen"]


@pytest.mark.timeout(240)
def test_a_short_real_run_on_nanogpt(ray_local, tmp_path):
    screens = short_run(NANOGPT, tmp_path / "run")
    assert all(f"a/{CONFIG}" in d for d in screens["diff"]), screens["diff"].tolist()


# -- karpathy/makemore: argparse defaults --------------------------------------------------------

MAKEMORE = FIXTURES / "makemore"


def test_makemore_argparse_defaults_are_what_mutate_edits():
    target = load_target(MAKEMORE)
    p = MutateProposer("mutate-0", target.editable, seed=0, hardware="cpu", space=target.knobs, off=target.knobs_off)
    knobs = {k.name: k.value for k in p.knobs(target.read_editable())}
    assert knobs == {"n_layer": 4, "n_embd": 64, "batch_size": 32, "learning_rate": 5e-4, "weight_decay": 0.01}
    p.update(Baseline(0, target.read_editable()))
    for proposal in (p.propose() for _ in range(10)):
        assert proposal.status == "ok", proposal.error
        old, new = target.read_editable()["makemore.py"].splitlines(), proposal.files["makemore.py"].splitlines()
        changed = [(a, b) for a, b in zip(old, new) if a != b]
        assert len(old) == len(new) and 1 <= len(changed) <= 2, proposal.diff
        for a, b in changed:  # only the default's characters: flags, type and help text stay
            assert "parser.add_argument(" in a and a.split("default=")[0] == b.split("default=")[0], (a, b)
            assert a.split("help=")[1] == b.split("help=")[1]


@pytest.mark.timeout(300)
def test_a_short_real_run_on_makemore(ray_local, tmp_path):
    screens = short_run(MAKEMORE, tmp_path / "run")
    assert all("a/makemore.py" in d and "default=" in d for d in screens["diff"]), screens["diff"].tolist()


@pytest.mark.timeout(240)
def test_check_on_makemore_names_its_knobs_noise_and_budget(tmp_path):
    root = tmp_path / "makemore"
    shutil.copytree(MAKEMORE, root)
    toml = root / "ar-ray.toml"
    toml.write_text(toml.read_text().replace("--max-steps 40", "--max-steps 8"))  # what check finds, not the model
    r = CliRunner().invoke(main, ["check", str(root), "--repeats", "2", "--sandbox", "none"])
    assert r.exit_code == 0, r.output
    for knob in ("learning_rate = 0.0005", "n_layer = 4", "n_embd = 64", "batch_size = 32", "weight_decay = 0.01"):
        assert knob in r.output
    assert "noise floor" in r.output and "deterministic" not in r.output  # --seed {seed} reaches torch.manual_seed
    assert "the budget is not a clock" in r.output  # makemore trains --max-steps, whatever the budget
    assert "verdict: ready, with warnings" in r.output
