"""Real public training code as targets (tests/fixtures/*, each with its license and ORIGIN.md): mutate edits their
config files, and a short real `ar-ray run` on each ends with runs `ok` and a finite metric."""

from __future__ import annotations

import math
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


@pytest.mark.timeout(240)
def test_a_short_real_run_on_nanogpt(ray_local, tmp_path):
    run_dir = tmp_path / "run"
    r = CliRunner().invoke(main, ["run", "--target", str(NANOGPT), "--run-dir", str(run_dir), "--trainers", "2",
                                  "--proposers", "1", "--max-experiments", "2", "--acceptance", "greedy"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    df = ledger.load(run_dir)
    ran = df[df.decision != "skip"]
    assert len(ran) == 3 and set(ran.status) == {"ok"}, df[["experiment_id", "status", "error"]]
    assert all(math.isfinite(m) and 0 < m < 10 for m in ran.metric)
    screens = ran[ran.role == "screen"]
    assert all(f"a/{CONFIG}" in d for d in screens["diff"]), screens["diff"].tolist()
