"""`ar-ray init`: a commented ar-ray.toml for an existing repo (a copy of the nanoGPT fixture without its own)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from ar_ray.cli.check_cmd import check_target, render
from ar_ray.cli.init_cmd import metric_from_log
from ar_ray.cli.main import main
from ar_ray.target import format_command, load_target
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


# -- what a stranger's own scripts print --------------------------------------------------------------------------

@pytest.mark.parametrize("line, name, direction, value", [
    ("val_rmse: 0.634", "val_rmse", "min", 0.634),
    ("val rmse 0.634", "val_rmse", "min", 0.634),
    ("test_rmse: 0.63", "test_rmse", "min", 0.63),
    ("val_mae: 0.2", "val_mae", "min", 0.2),
    ("val_auc: 0.8", "val_auc", "max", 0.8),
    ("val_rmse=0.634", "val_rmse", "min", 0.634),
    ("Validation RMSE: 0.634", "validation_rmse", "min", 0.634),
    ("val/rmse 0.634", "val_rmse", "min", 0.634),
    ("R2 score = 0.87", "r2_score", "max", 0.87),
    ("epoch 3 | val_mse 0.41 | lr 1e-3", "val_mse", "min", 0.41),
    ("Test accuracy: 0.93", "test_accuracy", "max", 0.93),
    ("  val_f1: 0.7", "val_f1", "max", 0.7),
    ("{'eval_loss': 0.53, 'epoch': 1.0}", "eval_loss", "min", 0.53),
    ("val_bpb 1.02", "val_bpb", "min", 1.02),
    ("val perplexity = 12.5", "val_perplexity", "min", 12.5),
    ("val_loss=1.23", "val_loss", "min", 1.23),
])
def test_common_metric_lines_among_training_lines(line, name, direction, value):
    """The metric line amid what a training loop prints around it (training losses and errors, before and after):
    the right name and direction, and a pattern that reads the value from the whole log, not a training line."""
    log = (f"epoch 1 train_loss 0.9 train_rmse 0.8 loss 0.95\n{line}\n"
           "epoch 2 train_loss 0.5 train rmse 0.45 loss 0.55 mse 0.3 rmse 0.2 accuracy 0.99\ndone\n")
    found = metric_from_log(log)
    assert found is not None and found[0] == name and found[2] == direction, found
    assert outcome.parse_metric(log, found[1]) == value


def test_no_validation_line_takes_an_evaluation_metric_but_never_a_training_one():
    assert metric_from_log("loss 1.0\ntrain loss 0.9\ntrain_rmse 0.5\ntraining accuracy: 0.9\n") is None
    name, pattern, direction, _ = metric_from_log("epoch 1 train rmse 0.5\nrmse: 0.61\nepoch 2 train rmse 0.4\n")
    assert (name, direction) == ("rmse", "min")
    assert outcome.parse_metric("train_rmse: 0.1\nrmse: 0.61\ntrain_rmse: 0.2\n", pattern) == 0.61


ONE_FILE = """
import argparse, random


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("-s", "--seed", type=int, default=0)
    args = parser.parse_args()
    # TODO: stop at AR_BUDGET_SECONDS and read AR_SEED
    random.seed(args.seed)
    print(f"epoch 1 train_loss 0.9 train_rmse {random.random():.3f}")
    print(f"val_rmse: {0.6 + random.random() / 10:.4f}")


if __name__ == "__main__":
    main()
"""


def test_init_on_a_one_file_repo_passes_its_seed_flag_and_check_agrees(tmp_path):
    """A stranger's one-file repo (argparse --seed, budget only in a comment), its log a val_rmse line: init writes
    `--seed {seed}`, a val_rmse pattern; check then runs it with different seeds (a noise floor) and says the budget
    is not read: ar-ray.toml, read-only by default, says AR_BUDGET_SECONDS in a comment, which must not count."""
    root = tmp_path / "mine"
    root.mkdir()
    (root / "fit.py").write_text(ONE_FILE)
    log = tmp_path / "first.log"
    log.write_text("epoch 1 train_loss 0.9 train_rmse 0.412\nval_rmse: 0.6341 val_mae: 0.21\n")
    r = CliRunner().invoke(main, ["init", str(root), "--log", str(log)])
    assert r.exit_code == 0, r.output
    assert "seed: passed as --seed {seed}" in r.output and "metric: val_rmse (min)" in r.output
    target = load_target(root)
    assert target.command == "{python} fit.py --seed {seed}" and "ar-ray.toml" in target.readonly
    assert format_command(target.command, seed=7)[1:] == ["fit.py", "--seed", "7"]
    assert target.metric == "val_rmse" and target.direction == "min"  # the first metric of the line
    assert "# other metrics in the log: val_mae" in (root / "ar-ray.toml").read_text()
    report = check_target(str(root), repeats=2, sandbox="none", gpus=[], overrides={"cpu_budget_seconds": 5},
                          log_dir=tmp_path / "logs")
    text = render(report)
    assert report.exit_code == 0 and report.facts["noise"] > 0, text  # the seed reached the script
    assert "budget in seconds: AR_BUDGET_SECONDS is named in no" in text and "read in" not in text
    assert "The target never reads AR_BUDGET_SECONDS" in text and "do not stop at the budget" not in text


def test_init_on_makemore_passes_its_argparse_seed(tmp_path):
    root = tmp_path / "makemore"
    shutil.copytree(FIXTURES / "makemore", root)
    (root / "ar-ray.toml").unlink()
    r = CliRunner().invoke(main, ["init", str(root)])
    assert r.exit_code == 0, r.output
    assert load_target(root).command == "{python} makemore.py --seed {seed}"
