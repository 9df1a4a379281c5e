"""`ar-ray init`: a commented ar-ray.toml for an existing repo (a copy of the nanoGPT fixture without its own)."""

from __future__ import annotations

import shutil
from pathlib import Path

from click.testing import CliRunner

from ar_ray.cli.init_cmd import metric_from_log
from ar_ray.cli.main import main
from ar_ray.target import load_target
from proposers.mutate import MutateProposer
from trainers import outcome

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def nanogpt_copy(tmp_path: Path) -> Path:
    root = tmp_path / "nanoGPT"
    shutil.copytree(FIXTURES / "nanogpt", root)
    (root / "ar-ray.toml").unlink()
    return root


def test_init_on_nanogpt_writes_a_toml_load_target_accepts(tmp_path):
    root = nanogpt_copy(tmp_path)
    (root / "out").mkdir()
    (root / "out" / "ckpt.pt").write_bytes(b"\0" * 64)  # a leftover of an earlier run
    log = tmp_path / "run.log"
    log.write_text("iter 29: loss 2.9000, time 3.1ms\nstep 30: train loss 2.8000, val loss 3.2400\n")
    r = CliRunner().invoke(main, ["init", str(root), "--log", str(log)])
    assert r.exit_code == 0, r.output
    text = (root / "ar-ray.toml").read_text()
    assert text.count("#") > 10  # commented for the user to edit
    target = load_target(root)
    assert target.editable == ("config/train_tiny_char.py",)
    assert target.command == "{python} train.py config/train_tiny_char.py"  # nanoGPT's configurator takes argv[1]
    assert "out/ckpt.pt" not in target.readonly and "train.py" in target.readonly
    assert target.metric == "val_loss" and target.direction == "min"
    assert outcome.parse_metric(log.read_text(), target.metric_pattern) == 3.24
    p = MutateProposer("m", target.editable, space=target.knobs, off=target.knobs_off)
    assert "learning_rate" in {k.name for k in p.knobs(target.read_editable())}


def test_init_refuses_to_overwrite_without_force(tmp_path):
    root = nanogpt_copy(tmp_path)
    (root / "ar-ray.toml").write_text("# mine\n")
    r = CliRunner().invoke(main, ["init", str(root)])
    assert r.exit_code == 1 and "--force" in r.output
    assert (root / "ar-ray.toml").read_text() == "# mine\n"
    r = CliRunner().invoke(main, ["init", str(root), "--force"])
    assert r.exit_code == 0, r.output
    assert load_target(root).metric == "val_loss"  # without a log: the commented default


def test_metric_lines_in_logs():
    assert metric_from_log("epoch 1\nval_loss: 1.23\n")[:3] == ("val_loss", r"^val_loss\s*:\s*(" +
                                                                 r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)", "min")
    name, pattern, direction, _ = metric_from_log("step 5 | val acc = 0.91 | lr 1e-3\n")
    assert (name, direction) == ("val_acc", "max")
    assert outcome.parse_metric("step 5 | val acc = 0.91 | lr 1e-3\n", pattern) == 0.91
    assert metric_from_log("loss 1.0\ntrain loss 0.9\n") is None
