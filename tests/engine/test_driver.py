"""The driver loop on a real local Ray with fake GPUs and real training subprocesses."""

from __future__ import annotations

import collections
import textwrap

import pytest
import ray
from helpers_targets import wait_for
from rich.console import Console
from toys import NOISY_TRAIN, make_toy, read_trace

from ar_ray.cli.progress import render, snapshot
from ar_ray.engine.config import RunConfig
from ar_ray.engine.run import execute
from ar_ray.ledger import store as ledger

SCRIPT = "toys:ScriptedProposer"


def run(tmp_path, monkeypatch, *, sleep=0.2, toml="", probe=None, acceptance="greedy", **kw):
    # the child's environment comes from the trainer actor's, plus what the target declares
    toml = f"[target]\nenv = {{ TOY_SLEEP = '{sleep}', TOY_TRACE = '1' }}\n" + textwrap.dedent(toml)
    target = make_toy(tmp_path / "target", toml)
    seen = {}

    def on_event(kind, driver, row):
        if kind == "finished" and probe:
            seen.update(probe(driver))

    config = RunConfig(target=str(target), run_dir=str(tmp_path / "run"), acceptance=acceptance, **kw)
    summary = execute(config, on_event=on_event)
    return summary, ledger.load(tmp_path / "run"), read_trace(tmp_path / "run"), seen


def test_keeps_every_trainer_busy_on_its_own_gpu(ray_local, tmp_path, monkeypatch):
    counters = {}
    summary, df, trace, _ = run(tmp_path, monkeypatch, sleep=0.6, max_experiments=20, proposers=2,
                                probe=lambda d: counters.update(starved=d.count.starved) or {})
    ran = df[df.decision != "skip"]
    assert (ran.role != "rebase").sum() == 21 and set(ran.status) == {"ok"}  # the baseline + 20 (+ stale winners' merges)
    assert ran.trainer.nunique() == 4  # one trainer per fake GPU
    # every trainer ran several experiments, each child saw exactly one GPU, the trainer's own
    by_trainer = ran.groupby("trainer", observed=True).size()
    assert by_trainer.min() >= 3
    ids_to_gpu = {t["id"]: t["gpus"] for t in trace}
    gpus_per_trainer = ran.assign(gpu=ran.experiment_id.map(ids_to_gpu)).groupby("trainer", observed=True).gpu.unique()
    assert all(len(g) == 1 for g in gpus_per_trainer)
    assert sorted(g[0] for g in gpus_per_trainer) == ["0", "1", "2", "3"]
    # four children really ran at once
    events = sorted([(t["start"], 1) for t in trace] + [(t["end"], -1) for t in trace])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    assert peak == 4
    # no trainer ever finished and found the proposal queue empty
    assert counters["starved"] == 0


def test_slow_proposers_are_seen_starving_trainers(ray_local, tmp_path, monkeypatch):
    """The starvation counter above can fail: with proposers slower than training, trainers wait."""
    counters = {}
    run(tmp_path, monkeypatch, sleep=0.05, max_experiments=8, proposers=1, queue_depth=1, proposer=SCRIPT,
        proposer_options={"delay": 0.5}, probe=lambda d: counters.update(starved=d.count.starved) or {})
    assert counters["starved"] > 0


def test_best_reaches_every_proposer_and_stale_work_is_visible(ray_local, tmp_path, monkeypatch):
    script = [[{"LR": 0.4}, "LR 0.4"], [{"WIDTH": 10}, "WIDTH 10"], [{"USE_X": True}, "USE_X"],
              [{"LR": 0.35}, "LR 0.35"], [{"WIDTH": 11}, "WIDTH 11"], [{"LR": 0.3}, "LR 0.3"]]

    def probe(driver):
        # the broadcast is fire-and-forget, and an async actor may run a later call first: wait (boundedly)
        def versions():
            seen = ray.get([p.baseline_version.remote() for p in driver.proposers])
            return seen if seen == [driver.best.version] * len(seen) else None
        try:
            got = wait_for(versions, 10, "every proposer to hold the newest best")
        except AssertionError:
            got = ray.get([p.baseline_version.remote() for p in driver.proposers])
        return {"versions": got, "best": driver.best.version}

    summary, df, _, seen = run(tmp_path, monkeypatch, sleep=0.5, max_experiments=12, proposers=3, proposer=SCRIPT,
                               proposer_options={"script": script}, probe=probe)
    assert summary["kept"] >= 1 and seen["best"] == summary["best_version"] >= 1
    assert seen["versions"] == [seen["best"]] * 3  # every proposer holds the newest best
    ran = df[df.decision != "skip"]
    # kept rows carry their files; the best's metric is the best of all ok rows greedy could keep (a stale winner is
    # re-applied onto the newer best, and the merge's own run decides: keeping it whole would undo the newer change)
    assert ran[ran.decision == "keep"].files.notna().all()
    keeps = ran[ran.decision == "keep"]
    assert summary["best_metric"] == keeps.metric.min() == keeps.metric.iloc[-1]
    beat = ran[(ran.status == "ok") & (ran.metric < summary["best_metric"])]
    assert (beat.base_version < beat.best_version).all(), beat  # each was made from a best that had moved on
    # stale proposals: made from an older version than the one they were judged against
    stale = ran[ran.base_version < ran.best_version]
    assert len(stale) >= 1
    # a row's parent is the experiment that produced its base version (a rebased winner's: its group, the screen)
    version_owner = dict(zip(ran[ran.decision.isin(["keep", "baseline"])].best_version,
                             ran[ran.decision.isin(["keep", "baseline"])].group_id))
    for r in ran[ran.proposer != "baseline"].itertuples():
        assert r.parent_id == version_owner[r.base_version]
    # the best metric column never gets worse, row after row
    best = ran.best_metric.tolist()
    assert all(b <= a + 1e-12 for a, b in zip(best, best[1:]))


def test_failures_are_recorded_and_the_run_goes_on(ray_local, tmp_path, monkeypatch):
    base = make_toy(tmp_path / "src").joinpath("train.py").read_text()
    script = [
        [{"MODE": "crash"}, "crashes"],
        [{"MODE": "nan"}, "diverges"],
        [{"MODE": "silent"}, "prints no metric"],
        [{"MODE": "hang"}, "hangs past the timeout"],
        [{"__raw__": base.replace("LR = 0.5", "LR = (0.5")}, "syntax error"],
        [{"__fail__": "the model refused"}, "refusal"],
        [{"LR": 0.5}, "no change at all"],
        [{"LR": 0.45}, "LR 0.45"],
        [{"LR": 0.45}, "LR 0.45 again"],
    ]
    toml = "timeout_seconds = 3\n"
    summary, df, _, _ = run(tmp_path, monkeypatch, toml=toml, sleep=0.05, max_experiments=6, proposers=1,
                            proposer=SCRIPT, proposer_options={"script": script}, trainers=2)
    status = dict(zip(df.description, df.status))
    assert status["crashes"] == "crash"
    assert status["diverges"] == "diverged"
    assert status["prints no metric"] == "no_metric"
    assert status["hangs past the timeout"] == "timeout"
    assert status["LR 0.45"] == "ok" and status["LR 0.45 again"] == "duplicate"
    skipped = df[df.decision == "skip"]
    assert set(skipped.status) == {"invalid_edit", "proposer_error", "duplicate"}
    assert skipped.trainer.isna().all() and skipped.started_at.isna().all()  # no trainer time spent on them
    err = dict(zip(df.description.fillna(""), df.error.fillna("")))
    assert "toy crash on purpose" in err["crashes"]
    assert "the model refused" in df[df.status == "proposer_error"].error.iloc[0]
    assert "line" in df[df.status == "invalid_edit"].error.iloc[0]
    assert df[df.status == "crash"].decision.tolist() == ["discard"]
    assert summary["experiments"] == 6


def test_summary_keys_land_in_typed_and_extra_columns(ray_local, tmp_path, monkeypatch):
    _, df, _, _ = run(tmp_path, monkeypatch, max_experiments=1, proposers=1, trainers=1)
    row = df[df.decision == "baseline"].iloc[0]
    assert row.num_steps == 10.0 and row.val_bpb == row.metric
    assert row["extra"] == {"my_custom_key": "hello"}
    assert row.run_seconds > 0 and row.overhead_seconds >= 0 and row.node and row.gpu_model == "gpu"
    assert collections.Counter(df.decision)["baseline"] == 1


def test_contradicting_resources_are_refused_before_anything_runs(ray_local, tmp_path, monkeypatch):
    from ar_ray.errors import ConfigError
    with pytest.raises(ConfigError, match="needs 10 GPUs; the cluster has 4"):
        run(tmp_path, monkeypatch, trainers=10, max_experiments=1)
    assert not (tmp_path / "run").exists()  # the run dir it made is gone again (no row was written)




def test_confirm_mode_end_to_end_on_a_noisy_target(ray_local, tmp_path):
    """Seeds differ per repeat, so runs of one code differ: the noise is measured, a real gain is confirmed
    and kept, a neutral change (WIDTH 8 -> 9 costs 0.001, well inside the noise) is not."""
    make_toy(tmp_path / "target", "", train=NOISY_TRAIN)
    script = [[{"WIDTH": 9}, "neutral"], [{"LR": 0.3}, "real gain"]]
    summary = execute(RunConfig(target=str(tmp_path / "target"), run_dir=str(tmp_path / "run"), proposer=SCRIPT,
                                proposer_options={"script": script}, proposers=1, trainers=2, max_experiments=2,
                                queue_depth=1))
    df = ledger.load(tmp_path / "run")
    ran = df[df.decision != "skip"]
    base = ran[(ran.role == "baseline") & (ran.base_version == 0)]
    assert len(base) == 3 and base.seed.nunique() == 3 and base.metric.nunique() == 3
    real = ran[ran.description == "real gain"].iloc[0]
    group = ran[ran.group_id == real.experiment_id]
    assert real.decision == "screened" and real.gain > real.threshold
    assert set(group.role) == {"screen", "confirm"} and len(group) == 3 and group.seed.nunique() == 3
    assert group.decision.iloc[-1] == "keep" and group.group_n.iloc[-1] == 2
    # no run of the same code replays a seed: the new best's repeat does not re-run its lucky screen
    assert ran[ran.edit_hash == real.edit_hash].seed.is_unique
    assert summary["kept"] == 1 and summary["best_version"] == 1
    # the new best got its 3 fresh repeats (the runs that decided the accept do not measure it), and the neutral
    # change was never kept
    assert ((ran.role == "baseline") & (ran.base_version == 1)).sum() == 3
    assert not (ran[ran.description == "neutral"].decision == "keep").any()
    # the noise is known from the second run of the baseline on, and recorded with every decision after
    assert ran.noise.isna().sum() == 1 and (ran.noise.dropna() > 0).all()


def test_a_trainer_with_two_gpus_runs_the_target_under_torchrun(ray_local, tmp_path):
    two_gpu_train = (
        "import os\nLR = 0.5\n"
        "if os.environ.get('RANK', '0') == '0':\n"
        "    print('---')\n"
        "    print(f\"val_bpb: {1 + LR:.6f}\")\n"
        "    print('world_size:', os.environ.get('WORLD_SIZE', '1'))\n"
        "    print('gpus:', os.environ['CUDA_VISIBLE_DEVICES'])\n")
    make_toy(tmp_path / "target", "", train=two_gpu_train)
    execute(RunConfig(target=str(tmp_path / "target"), run_dir=str(tmp_path / "run"), trainers=2, gpus_per_trainer=2,
                      max_experiments=1, proposers=1, acceptance="greedy"))
    df = ledger.load(tmp_path / "run")
    ran = df[df.decision != "skip"]
    assert len(ran) == 2 and set(ran.status) == {"ok"}
    assert all(e["world_size"] == "2" for e in ran["extra"])
    assert all(len(e["gpus"].split(",")) == 2 for e in ran["extra"])  # each child saw its trainer's two GPUs


def test_max_cost_stops_asking_for_proposals(ray_local, tmp_path, monkeypatch):
    """Each proposal costs $0.10; with --max-cost 0.25 the driver stops asking after the third is paid for."""
    summary, df, _, seen = run(tmp_path, monkeypatch, sleep=0.05, max_experiments=50, proposers=1, queue_depth=1,
                               trainers=1, proposer=SCRIPT, proposer_options={"cost": 0.1}, max_cost=0.25,
                               probe=lambda d: {"proposed": d.count.proposed})
    assert not summary["interrupted"] and summary["experiments"] < 50
    assert summary["cost_usd"] == pytest.approx(0.1 * seen["proposed"]) and 0.25 <= summary["cost_usd"] <= 0.35
    assert df.cost_usd.sum() == pytest.approx(summary["cost_usd"])  # every paid proposal is a row
    assert summary["cost_per_kept"] is None or summary["cost_per_kept"] == pytest.approx(summary["cost_usd"] / summary["kept"])


LADDER_TRAIN = '''\
import os, random
LR = 0.5
WIDTH = 8
USE_X = False
rng = random.Random(int(os.environ["AR_SEED"]) * 7919 + int(float(os.environ["AR_BUDGET_SECONDS"])))
true = 2.0 / float(os.environ["AR_BUDGET_SECONDS"]) + abs(LR - 0.3) + abs(WIDTH - 8) * 0.03 + (0.0 if USE_X else 0.1)
print("---")
print(f"val_bpb: {true + rng.gauss(0, 0.002):.6f}")
'''


def test_a_promotion_ladder_screens_cheap_promotes_and_reports_transfer(ray_local, tmp_path):
    """--ladder 1,2: new candidates run with a 1 s budget, winners are promoted to 2 s, where they are accepted;
    the best has its repeats at both rungs; the transfer report pairs the two scales."""
    make_toy(tmp_path / "target", "", train=LADDER_TRAIN)
    script = [[{"LR": 0.3}, "big gain"], [{"USE_X": True}, "gain"], [{"WIDTH": 9}, "worse"]]
    live = {}

    def on_event(kind, driver, row):
        if kind == "finished":
            pol = driver.policy
            live.update(best_runs=pol.best_runs, spread=pol.spread, code_means=pol.code_means,
                        rung_gains=pol.rung_gains, version=pol.best_version, snap=snapshot(driver, "finished"))

    cfg = RunConfig(target=str(tmp_path / "target"), run_dir=str(tmp_path / "run"), proposer=SCRIPT,
                    proposer_options={"script": script}, proposers=1, trainers=2, max_experiments=3,
                    queue_depth=1, ladder="1,2", promote_fraction=1.0)
    summary = execute(cfg, on_event=on_event)
    ran = ledger.load(tmp_path / "run").query("decision != 'skip'")
    first = ran[(ran.role == "baseline") & (ran.base_version == 0)]
    assert sorted(first.budget_seconds) == [1.0] * 3 + [2.0] * 3
    assert set(ran[ran.role == "screen"].budget_seconds) == {1.0}
    assert set(ran[ran.role == "promote"].budget_seconds) == {2.0}
    big = ran[ran.description == "big gain"].iloc[0]
    assert big.decision == "promoted" and big.gain == pytest.approx(0.2, abs=0.02)
    group = ran[(ran.group_id == big.experiment_id) & (ran.role == "promote")]
    assert len(group) == 2 and group.gain.iloc[-1] == pytest.approx(0.2, abs=0.02)
    # kept, or, when the other winner was accepted while it was being confirmed, rebased onto that new best
    assert group.decision.iloc[-1] in ("keep", "screened") and summary["kept"] >= 1
    if group.decision.iloc[-1] == "screened":
        assert (ran[ran.group_id == big.experiment_id].role == "rebase").any()
    assert ran[ran.description == "worse"].decision.tolist() == ["discard"]
    # the new best is measured again at the cheap rung (its full-scale runs came from the promotion)
    assert ((ran.role == "baseline") & (ran.base_version == 1) & (ran.budget_seconds == 1.0)).sum() == 3
    assert summary["transfer"]["n"] == 2 and (tmp_path / "run" / "transfer.json").exists()
    from ar_ray.cli import report
    page = report.build(tmp_path / "run").html.read_text()
    assert "Transfer across the ladder" in page and "rank transfer over 2 candidates" in page
    # the status view shows the best and the noise at each rung
    rungs = live["snap"]["rungs"]
    assert [r["scale"] for r in rungs] == ["budget 1 s", "budget 2 s"] and all(r["noise"] > 0 for r in rungs)
    assert rungs[0]["best_mean"] > rungs[1]["best_mean"]  # the toy's metric falls with the budget
    console = Console(record=True, width=200)
    console.print(render(live["snap"]))
    assert "rung 1 (budget 2 s): best" in console.export_text()
    # a resume rebuilds the ladder's state: the best's runs and the noise per rung, what each rung has seen
    from ar_ray.engine.driver import Driver
    from ar_ray.engine.run import restore
    from ar_ray.ledger.store import Ledger
    from ar_ray.search.policy import Policy
    from ar_ray.target import load_target
    t = load_target(cfg.target)
    fresh = Driver(t, Ledger(tmp_path / "run"), summary["run_id"], [], [], Policy(cfg.policy(), t.direction),
                   queue_depth=1, scales=cfg.scales())
    restore(fresh, str(tmp_path / "run"))
    pol = fresh.policy
    assert pol.best_version == live["version"] and pol.rung_gains == live["rung_gains"]
    assert {r: sorted(v) for r, v in pol.best_runs.items()} == {r: sorted(v) for r, v in live["best_runs"].items()}
    assert pol.spread == live["spread"] and pol.code_means == live["code_means"]


def test_token_budgeted_runs_get_a_timeout_learned_from_the_best(ray_local, tmp_path, monkeypatch):
    """A token budget says nothing about wall time: the best's own runs and the first runs on a GPU model may take
    FIRST seconds, later ones 3 x the slowest run of the best there + 60 s; a resume learns the same from the ledger."""
    from ar_ray import timeouts
    live = {}
    summary, df, trace, _ = run(tmp_path, monkeypatch, sleep=0.3, max_experiments=12, toml="budget_tokens = 1000\n",
                                probe=lambda d: live.update(slowest=dict(d.timeouts.slowest)) or {})
    ran = df[df.decision != "skip"]
    teachers = ran[(ran.status == "ok") & ((ran.role == "baseline") | (ran.decision == "keep"))]
    possible = [timeouts.FACTOR * s + timeouts.SLACK for s in teachers.run_seconds]
    got = {t["id"]: t["timeout"] for t in trace}
    assert got[ran[ran.role == "baseline"].experiment_id.iloc[0]] == timeouts.FIRST  # nothing known yet
    later = [got[e] for e in ran.experiment_id if got[e] != timeouts.FIRST]
    assert later and all(any(t == pytest.approx(p, rel=1e-5) for p in possible) for t in later)
    assert max(later) < 70 < timeouts.wall_rule(None)  # neither the first limit nor the wall-clock rule
    learned = max(possible)
    model = ran.gpu_model.iloc[0]  # fake GPUs here: one model for all trainers
    assert live["slowest"] == {(0, model): pytest.approx(teachers.run_seconds.max())}  # per rung and GPU model
    # a resume restores what was learned
    from ar_ray.engine.driver import Driver
    from ar_ray.engine.run import restore
    from ar_ray.ledger.store import Ledger
    from ar_ray.search.policy import Policy, PolicyConfig
    from ar_ray.target import load_target
    t = load_target(tmp_path / "target", budget_tokens=1000)
    fresh = Driver(t, Ledger(tmp_path / "run"), summary["run_id"], [], [], Policy(PolicyConfig("greedy")), queue_depth=1)
    assert fresh.timeouts.learned((0, model), {}) is None
    restore(fresh, str(tmp_path / "run"))
    assert fresh.timeouts.learned((0, model), {}) == pytest.approx(learned)

def test_bad_edits_early_on_do_not_stop_the_run(ray_local, tmp_path, monkeypatch):
    """Only proposer errors (auth, unreachable, no hyperparameters) stop a run early; a weak model's bad edits
    before the first candidate ran are just rows."""
    script = [[{"__raw__": "def broken(:\n"}, "does not compile"]] * 12 + [[{"LR": 0.4}, "LR 0.4"]]
    summary, df, _, _ = run(tmp_path, monkeypatch, sleep=0.5, max_experiments=1, trainers=1, proposers=1,
                            proposer=SCRIPT, proposer_options={"script": script})
    assert (df.status == "invalid_edit").sum() >= 12
    assert df[(df.role == "screen") & (df.decision != "skip")].description.tolist() == ["LR 0.4"]


def test_proposals_are_asked_only_for_experiments_that_can_run(ray_local, tmp_path, monkeypatch):
    summary, df, _, seen = run(tmp_path, monkeypatch, sleep=0.05, max_experiments=3, proposers=1, queue_depth=4,
                               trainers=1, proposer=SCRIPT, proposer_options={"cost": 0.1},
                               probe=lambda d: {"proposed": d.count.proposed})
    assert summary["experiments"] == 3 and seen["proposed"] == 3  # a queue of 4 would have paid for 4
    assert df.cost_usd.sum() == pytest.approx(summary["cost_usd"]) == pytest.approx(0.3)


def test_proposals_left_when_time_runs_out_are_recorded_with_their_cost(ray_local, tmp_path, monkeypatch):
    summary, df, _, _ = run(tmp_path, monkeypatch, sleep=1.5, time_limit=2.0, proposers=1, queue_depth=3,
                            trainers=1, proposer=SCRIPT, proposer_options={"cost": 0.1})
    unused = df[df.status == "unused"]
    assert len(unused) >= 1 and set(unused.decision) == {"skip"} and (unused.cost_usd == 0.1).all()
    assert unused.error.str.contains("stopped before it ran").all()
    assert df.cost_usd.sum() == pytest.approx(summary["cost_usd"])  # every paid proposal is a row
    # a resume runs them first, and pays for nothing twice
    again = execute(RunConfig(target=str(tmp_path / "target"), run_dir=str(tmp_path / "run"), acceptance="greedy",
                              resume=True, max_experiments=summary["experiments"] + len(unused), proposers=1,
                              queue_depth=1, trainers=1, proposer=SCRIPT, proposer_options={"cost": 0.1}))
    after = ledger.load(tmp_path / "run")
    ran_later = after[(after.seq >= len(df)) & (after.decision != "skip")]
    assert set(unused.edit_hash) <= set(ran_later.edit_hash)
    assert after.cost_usd.sum() == pytest.approx(df.cost_usd.sum())  # nothing new was asked for
    assert again["cost_usd"] == pytest.approx(after.cost_usd.sum())


def test_a_trainer_that_restarts_gets_work_again_only_once_it_answers(ray_local, tmp_path, monkeypatch):
    """A restarting actor fails every call at once: the lost run waits for the trainer instead of burning its
    retries in a few milliseconds and ending as `infra`."""
    killed = []

    def kill_once(kind, driver, row):
        if kind == "tick" and not killed and driver.count.ran >= 2 and driver.running:
            killed.append(next(iter(driver.running.values())).job.experiment_id)
            ray.kill(driver.trainers[0], no_restart=False)

    make_toy(tmp_path / "target", "[target]\nenv = { TOY_SLEEP = '1.0' }\n")
    summary = execute(RunConfig(target=str(tmp_path / "target"), run_dir=str(tmp_path / "run"), acceptance="greedy",
                                trainers=1, proposers=1, max_experiments=3, proposer=SCRIPT), on_event=kill_once)
    df = ledger.load(tmp_path / "run")
    assert killed and summary["infra"] >= 1  # the trainer really was lost mid-run
    lost = df[df.experiment_id == killed[0]]
    assert list(lost.status) == ["ok"]  # re-run once the trainer was back, under its own id
    assert "infra" not in set(df.status)
