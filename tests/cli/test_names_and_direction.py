"""A metric's name and its direction: `ar-ray init` and `--metric NAME` read the same heuristic (ar_ray/metric_names.py);
`--metric val_auc` on a target minimizing val_rmse, without --direction, is refused before Ray starts (a stranger's
run had silently minimized an AUC)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from toys import make_toy

from ar_ray.cli.init_cmd import metric_from_log
from ar_ray.cli.main import main
from ar_ray.metric_names import direction_of
from ar_ray.target import TargetError, load_target

TRAIN = "print('val_rmse: 0.9')\nprint('val_auc: 0.7')\nLR = 0.5\n"


def test_the_name_heuristic():
    for name in ("val_loss", "val_rmse", "test_mae", "eval/perplexity", "error_rate", "val_bpb", "WER", "log_loss"):
        assert direction_of(name) == "min", name
    for name in ("val_auc", "accuracy", "valAccuracy", "test-acc", "r2_score", "f1", "bleu", "val_precision",
                 "recall", "score", "roc_auc", "eval/top1_acc"):
        assert direction_of(name) == "max", name
    # unsure: names that say neither, both, or are negated (sklearn's neg_log_loss is maximized)
    for name in ("throughput", "val_metric", "heatmap_size", "loss_score", "neg_log_loss", "neg_mean_squared_error"):
        assert direction_of(name) is None, name


def test_init_reads_the_direction_from_the_same_heuristic():
    assert metric_from_log("epoch 3 val_auc: 0.81\n")[2] == "max"
    assert metric_from_log("epoch 3 val_rmse: 0.81\n")[2] == "min"


def toy(tmp_path, toml='[target]\nmetric = "val_rmse"\n'):
    return make_toy(tmp_path / "target", toml, train=TRAIN)


def test_a_new_metric_that_says_the_other_way_needs_direction(tmp_path):
    root = toy(tmp_path)
    with pytest.raises(TargetError, match="--direction max"):
        load_target(root, metric="val_auc")
    assert load_target(root, metric="val_auc", direction="max").direction == "max"
    assert load_target(root, metric="val_auc", direction="min").direction == "min"  # said outright: believed
    assert load_target(root, metric="val_mae").direction == "min"  # same way
    assert load_target(root, metric="val_metric").direction == "min"  # unsure: the target's direction stays
    # a target maximizing its metric: a loss needs --direction min
    maxed = make_toy(tmp_path / "maxed", '[target]\nmetric = "val_auc"\ndirection = "max"\n', train=TRAIN)
    with pytest.raises(TargetError, match="--direction min"):
        load_target(maxed, metric="val_rmse")
    assert load_target(maxed, metric="accuracy").direction == "max"
    # the default target (val_bpb, min, nothing declared) too
    bare = make_toy(tmp_path / "bare", None, train=TRAIN)
    with pytest.raises(TargetError, match="--direction max"):
        load_target(bare, metric="accuracy")


def test_the_run_is_refused_before_ray_starts(tmp_path, monkeypatch):
    import ar_ray.engine.cluster as cluster
    monkeypatch.setattr(cluster, "connect", lambda *a, **k: pytest.fail("Ray was started"))
    root = toy(tmp_path)
    run_dir = tmp_path / "run"
    r = CliRunner().invoke(main, ["run", "--target", str(root), "--run-dir", str(run_dir), "--metric", "val_auc"])
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert "'val_auc'" in text and "maximized" in text and "--direction max" in text, r.output
    assert not run_dir.exists()
