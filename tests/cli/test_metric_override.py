"""`--metric NAME` without `--metric-pattern`: the target's own pattern follows the new name, or the run is refused
before Ray starts when it cannot (a stranger's run once showed val_rmse numbers labelled val_mae)."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner
from toys import make_toy

from ar_ray.cli.main import main
from ar_ray.ledger import store as ledger
from ar_ray.target import TargetError, load_target

TRAIN = "print('---')\nprint('val_rmse=0.900000')\nprint('val_mae=0.300000')\nLR = 0.5\n"
TOML = """
[target]
metric = "val_rmse"
metric_pattern = '{pattern}'
"""


def target(tmp_path, pattern=r"^val_rmse=(\S+)"):
    return make_toy(tmp_path / "target", TOML.format(pattern=pattern), train=TRAIN)


OUTPUT = "---\nval_rmse=0.900000\nval_mae=0.300000\n"  # what TRAIN prints


def metric_of(pattern: str, text: str = OUTPUT) -> str:
    return re.findall(pattern, text, re.MULTILINE)[-1]


def test_the_targets_pattern_follows_the_new_metric_name(tmp_path):
    root = target(tmp_path)
    assert metric_of(load_target(root).metric_pattern) == "0.900000"  # as declared
    t = load_target(root, metric="val_mae")
    assert t.metric == "val_mae" and metric_of(t.metric_pattern) == "0.300000"
    # the pattern given with it, or the same name, leave the pattern alone
    assert load_target(root, metric="val_mae", metric_pattern=r"^val_rmse=(\S+)").metric_pattern == r"^val_rmse=(\S+)"
    assert load_target(root, metric="val_rmse").metric_pattern == r"^val_rmse=(\S+)"
    # a name with regex characters is matched literally
    assert metric_of(load_target(root, metric="val.mae").metric_pattern, "val.mae=1.5\nvalXmae=2.5\n") == "1.5"


def test_a_target_without_a_pattern_gets_the_default_one_for_the_new_name(tmp_path):
    root = make_toy(tmp_path / "target", '[target]\nmetric = "val_rmse"\n', train="print('val_mae: 0.25')\n")
    assert metric_of(load_target(root, metric="val_mae").metric_pattern, "val_rmse: 9\nval_mae: 0.25\n") == "0.25"


def test_a_pattern_that_does_not_name_the_metric_is_refused_before_ray_starts(tmp_path, monkeypatch):
    import ar_ray.engine.cluster as cluster
    monkeypatch.setattr(cluster, "connect", lambda *a, **k: pytest.fail("Ray was started"))
    root = target(tmp_path, pattern=r"^score=(\S+)")
    with pytest.raises(TargetError, match="does not name it"):
        load_target(root, metric="val_mae")
    r = CliRunner().invoke(main, ["run", "--target", str(root), "--run-dir", str(tmp_path / "run"), "--metric", "val_mae"])
    assert r.exit_code == 2, r.output
    assert "pass --metric-pattern too" in r.output and "'^score=(\\S+)'" in r.output
    assert not (tmp_path / "run").exists()


def test_a_run_with_metric_records_the_new_metrics_values(ray_local, tmp_path):
    root = target(tmp_path)
    run_dir = tmp_path / "run"
    r = CliRunner().invoke(main, ["run", "--target", str(root), "--run-dir", str(run_dir), "--metric", "val_mae",
                                  "--max-experiments", "1", "--trainers", "1", "--proposers", "1",
                                  "--baseline-repeats", "1", "--acceptance", "greedy"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rows = ledger.load(run_dir)
    assert len(rows) >= 1 and set(rows["metric"].dropna()) == {0.3}  # val_mae's value, never val_rmse's 0.9
    assert "best val_mae: 0.300000" in r.output
