"""Early stopping (--prune): the rule on hand-made curves, the log watcher on real subprocesses, the driver on Ray."""

from __future__ import annotations

import math
import textwrap

import pytest
from helpers_targets import candidate, make_target

from ar_ray.search import pruning
from ar_ray.search.pruning import PruneRule, References

PERCENT = r"loss (?P<loss>\S+) \| (?P<percent>[\d.]+)% done"


def curve(losses_by_percent: dict[float, float]) -> pruning.Curve:
    return tuple((p / 100, loss) for p, loss in sorted(losses_by_percent.items()))


def test_points_are_read_from_percent_or_fraction_lines_and_garbage_is_skipped():
    rx = pruning.compile_pattern(PERCENT)
    text = "loss 3.5 | 10% done\nnoise\nloss nan | 20% done\nloss x | 30% done\nloss 2.5 | 40.5% done\nloss 2 | 250% done"
    assert pruning.parse_points(text, rx) == [(0.1, 3.5), (0.405, 2.5), (1.0, 2.0)]  # progress clipped to 1
    rx = pruning.compile_pattern(r"p=(?P<progress>\S+) l=(?P<loss>\S+)")
    assert pruning.parse_points("p=0.25 l=1.5\np=0.5 l=1.25", rx) == [(0.25, 1.5), (0.5, 1.25)]


@pytest.mark.parametrize("pattern, says", [("loss (?P<loss>\\S+)", "named groups"),
                                           ("(?P<percent>\\d+)%", "named groups"),
                                           ("loss (?P<loss>\\S+", "not a valid regex")])
def test_a_pattern_without_both_groups_is_refused_with_an_example(pattern, says):
    with pytest.raises(ValueError, match=says):
        pruning.compile_pattern(pattern)


def test_rule_checks_its_numbers():
    for bad in [dict(checkpoints=()), dict(checkpoints=(0.5, 1.0)), dict(checkpoints=(0,)), dict(margin=-0.1),
                dict(margin=math.nan)]:
        with pytest.raises(ValueError):
            PruneRule(**bad)


def test_limits_are_the_mean_of_the_references_window_plus_the_margin():
    a = curve({30: 9.0, 42: 3.0, 48: 2.0, 70: 1.5, 75: 1.0})  # window (40%, 50%]: 2.5; (65%, 75%]: 1.25
    b = curve({45: 3.5, 50: 2.5, 80: 0.5})  # (40%, 50%]: 3.0; nothing in (65%, 75%]
    limits = pruning.thresholds(PruneRule((0.5, 0.75), margin=0.1), [a, b])
    assert [p for p, _ in limits] == [0.5, 0.75]
    assert [x for _, x in limits] == pytest.approx([2.75 * 1.1, 1.25 * 1.1])
    # a checkpoint no reference covers is left out rather than guessed
    assert pruning.thresholds(PruneRule((0.2,), 0.1), [a, b]) == ()


def test_verdict_waits_for_the_checkpoint_and_judges_the_window_mean():
    limits = ((0.5, 3.0), (0.75, 2.0))
    assert pruning.verdict([], limits) is None
    assert pruning.verdict([(0.45, 9.0)], limits) is None  # far worse, but the checkpoint is not reached yet
    assert pruning.verdict([(0.45, 2.0), (0.5, 3.9)], limits) is None  # window mean 2.95 <= 3.0: one bad step is noise
    why = pruning.verdict([(0.45, 3.2), (0.5, 3.4)], limits)
    assert why and "50%" in why and "3.3" in why and "at most 3" in why
    # past the first checkpoint fine, past the second too far
    assert "75%" in pruning.verdict([(0.5, 2.9), (0.7, 2.3), (0.76, 2.2)], limits)
    # a run that stopped logging progress (a changed log format) is never stopped
    assert pruning.verdict([(0.1, 99.0)], limits) is None


def test_references_follow_the_best_and_fall_back_to_other_gpu_models():
    refs, rule = References(), PruneRule((0.5,), margin=0.0)
    refs.observe(0, (0, "H100"), curve({50: 3.0}))
    refs.observe(0, (0, "A100"), curve({50: 4.0}))
    refs.observe(0, (1, "H100"), curve({50: 2.0}))
    assert refs.limits(rule, 0, (0, "H100")) == ((0.5, 3.0),)
    assert refs.limits(rule, 0, (0, "L4")) == ((0.5, 3.5),)  # no run on this model: every model at the rung
    assert refs.limits(rule, 0, (0, None)) == ((0.5, 3.5),)  # a trainer whose model is not known yet
    assert refs.limits(rule, 0, (1, "A100")) == ((0.5, 2.0),)
    assert refs.limits(rule, 1, (0, "H100")) == ()  # a best whose runs have not finished: nothing to compare with
    refs.observe(1, (0, "H100"), curve({50: 2.5}))  # a new best: the old curves go
    refs.observe(0, (0, "H100"), curve({50: 9.0}))  # a late run of the old best is ignored
    assert refs.limits(rule, 1, (0, "A100")) == ((0.5, 2.5),)
    refs.observe(1, (0, "H100"), ())  # a run without a curve adds nothing
    assert len(refs.curves[(0, "H100")]) == 1


def test_downsample_keeps_the_ends_and_the_order():
    points = [(i / 999, float(i)) for i in range(1000)]
    small = pruning.downsample(points, 64)
    assert len(small) == 64 and small[0] == points[0] and small[-1] == points[-1]
    assert list(small) == sorted(small)
    assert pruning.downsample(points[:10], 64) == tuple(points[:10])


# -- the trainer: a real child process, its log watched while it runs ------------------------------------

CURVE_TRAIN = '''
import os, sys, time
LOSS = 3.0
STALL = 0.0
for i in range(1, 11):
    print(f"step {i} | loss {LOSS + (10 - i) * 0.1:.3f} | {i * 10}% done", flush=True)
    if i == 6:
        time.sleep(STALL)  # a hopeless run keeps going here unless it is stopped
print("---")
print(f"val_bpb: {LOSS:.4f}")
'''
TOML = f"""
[target]
progress_pattern = '{PERCENT}'
"""


@pytest.fixture
def curve_target(tmp_path):
    return make_target(tmp_path / "target", CURVE_TRAIN, toml=TOML, budget_seconds=5)


@pytest.mark.timeout(120)
def test_a_run_past_its_limit_is_stopped_and_a_run_within_it_finishes(curve_target, tmp_path):
    from trainers.trainer import Trainer
    trainer = Trainer(curve_target, str(tmp_path / "work"), grace_seconds=1.0)
    ok = trainer.run(candidate(curve_target))
    assert ok.status == "ok" and ok.metric == 3.0
    assert len(ok.curve) == 10 and ok.curve[0] == (0.1, pytest.approx(3.9)) and ok.curve[-1] == (1.0, 3.0)

    limits = pruning.thresholds(PruneRule((0.5,), margin=0.05), [ok.curve])  # 3.5 (the 50 % line) + 5 %: 3.675
    bad = trainer.run(candidate(curve_target, CURVE_TRAIN.replace("LOSS = 3.0", "LOSS = 4.0")
                                .replace("STALL = 0.0", "STALL = 600.0"), prune=limits))
    assert bad.status == "pruned" and bad.metric is None
    assert "pruned at 50%" in bad.error_tail and "loss 4.5 against at most 3.675" in bad.error_tail
    assert bad.child_seconds < 300  # stopped, not run to its 600 s stall (the hard timeout is 70 s anyway)
    assert [p for p, _ in bad.curve][:5] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])

    close = trainer.run(candidate(curve_target, CURVE_TRAIN.replace("LOSS = 3.0", "LOSS = 3.1"), prune=limits))
    assert close.status == "ok" and close.metric == pytest.approx(3.1)  # 3.6 < 3.675: within the margin


def test_a_target_without_a_pattern_records_no_curve(tmp_path):
    from trainers.trainer import Trainer
    target = make_target(tmp_path / "target", CURVE_TRAIN, budget_seconds=5)
    r = Trainer(target, str(tmp_path / "work")).run(candidate(target, prune=((0.5, 0.0),)))
    assert r.status == "ok" and r.curve == ()  # nothing to read the limits against: never stopped


def test_only_new_candidates_get_limits(tmp_path):
    from ar_ray.engine.driver import Driver, Job
    from ar_ray.ledger.store import Ledger
    from ar_ray.search.policy import Policy, PolicyConfig
    from ar_ray.types import Proposal
    target = make_target(tmp_path / "target", CURVE_TRAIN, toml=TOML)
    driver = Driver(target, Ledger(tmp_path / "run"), "r", [], [], Policy(PolicyConfig()), queue_depth=1,
                    prune=PruneRule((0.5,), 0.0))
    driver.references.observe(0, (0, "cpu"), curve({50: 3.0}))
    driver.gpu_models[0] = "cpu"
    p = Proposal("x", 0, "d", target.read_editable())
    assert driver._prune_limits(Job(p), 0) == ((0.5, 3.0),)
    for role in ("baseline", "confirm", "rebase", "promote"):
        assert driver._prune_limits(Job(p, role=role), 0) == ()
    driver.prune = None
    assert driver._prune_limits(Job(p), 0) == ()


def test_prune_needs_a_progress_pattern(tmp_path):
    from ar_ray.engine.config import RunConfig
    from ar_ray.engine.run import execute
    from ar_ray.errors import ConfigError
    target = make_target(tmp_path / "target", CURVE_TRAIN).root
    with pytest.raises(ConfigError, match="declares no progress_pattern"):
        execute(RunConfig(target=str(target), run_dir=str(tmp_path / "run"), prune=True))
    assert not (tmp_path / "run").exists()  # refused before anything was written
    with pytest.raises(ConfigError, match="--prune-at"):
        RunConfig(target=str(target), run_dir=str(tmp_path / "run"), prune_at=(0.5, 1.5)).check()
    bad = textwrap.dedent("""
        [target]
        progress_pattern = 'loss (?P<loss>\\S+)'
    """)
    from ar_ray.target import TargetError
    with pytest.raises(TargetError, match="named groups"):
        make_target(tmp_path / "t2", CURVE_TRAIN, toml=bad)


# -- the driver on a real local Ray: pruned runs in the ledger, the best's curves restored on resume -------

DRIVER_TRAIN = '''
import os, time
LR = 0.5
loss = 3.0 + 4 * abs(LR - 0.5)
for i in range(1, 11):
    print(f"step {i} | loss {loss + (10 - i) * 0.1:.3f} | {i * 10}% done", flush=True)
    if i == 6 and LR > 2:
        time.sleep(600)  # hopeless and slow: only --prune ends it early
print("---")
print(f"val_bpb: {loss:.4f}")
'''


@pytest.mark.timeout(240)
def test_the_driver_prunes_hopeless_candidates_and_a_resume_keeps_the_reference(ray_local, tmp_path):
    from toys import make_toy

    from ar_ray.engine.config import RunConfig
    from ar_ray.engine.run import execute
    from ar_ray.ledger import store as ledger
    target = make_toy(tmp_path / "target", TOML, train=DRIVER_TRAIN)

    def config(script, **kw):
        return RunConfig(target=str(target), run_dir=str(tmp_path / "run"), acceptance="greedy", trainers=1, proposers=1,
                         proposer="toys:ScriptedProposer", proposer_options={"script": script}, prune=True,
                         prune_at=(0.5,), prune_margin=0.05, **kw)

    # the first candidate starts the moment the baseline lands, and is checked against its curve already
    # "a little lower" stays within the margin at every checkpoint (at 50 %: 3.54 against at most 3.5 x 1.05), so it
    # is never pruned however soon its progress is read (LR 0.45 was 3.7 there: pruned whenever the driver looked
    # before the run's 0.1 s were over, as it did under load in a CI run)
    first = execute(config([[{"LR": 5.0}, "far too high"], [{"LR": 0.49}, "a little lower"]], max_experiments=2))
    assert first["by_status"] == {"ok": 2, "pruned": 1}
    df = ledger.load(tmp_path / "run")
    pruned = df[df.status == "pruned"].iloc[0]
    assert pruned.description == "far too high" and pruned.decision == "discard" and pruned.run_seconds < 300
    assert "pruned at 50%" in pruned.error
    baseline = df[df.decision == "baseline"].iloc[0]
    assert len(baseline.curve) == 10 and baseline.curve[4]["loss"] == pytest.approx(3.5)
    assert len(pruned.curve) == 6  # read up to where it was stopped
    from click.testing import CliRunner

    from ar_ray.cli.main import main
    shown = CliRunner().invoke(main, ["show", str(tmp_path / "run"), pruned.experiment_id], catch_exceptions=False)
    assert "training curve (6 points; progress loss): 10% 21.9 · 20% 21.8" in shown.output
    assert "60% 21.4" in shown.output and "status pruned" in shown.output

    second = execute(config([[{"LR": 6.0}, "even higher"]], max_experiments=3, resume=True))
    assert second["by_status"] == {"pruned": 1}  # the restored best's curve was the reference at once
    again = ledger.load(tmp_path / "run")
    assert list(again.status) == ["ok", "pruned", "ok", "pruned"]
