"""The `ar-ray` command line: bad input gets a clear error and loses nothing; reading commands work."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from helpers_targets import marked_pids, new_mark, wait_for
from toys import make_toy

from ar_ray.cli.main import main
from ar_ray.ledger import store as ledger


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def toy(tmp_path):
    return make_toy(tmp_path / "target", "[target]\nenv = { TOY_SLEEP = '0.05' }\n")


def test_a_target_without_its_editable_file_is_refused(tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "prepare.py").write_text("X = 1\n")
    (tmp_path / "target" / "ar-ray.toml").write_text("[target]\n")  # (without it: test_cli_edges, `ar-ray init`)
    r = invoke("run", "--target", tmp_path / "target", "--run-dir", tmp_path / "run")
    assert r.exit_code == 2  # refused before Ray starts, like the other config errors
    assert "editable file 'train.py' is missing" in r.output and "create it" in r.output


@pytest.mark.parametrize("args, message", [
    (["--proposers", "0"], "--proposers must be at least 1"),
    (["--max-experiments", "0"], "--max-experiments must be at least 1"),
    (["--time-limit", "soon"], "is not a duration"),
    (["--direction", "sideways"], "'sideways' is not one of"),
    (["--metric-pattern", "val_bpb: no group"], "needs one capture group"),
    (["--metric-pattern", "val_bpb: ((("], "not a valid regular expression"),
    (["--budget", "-5"], "must be positive"),
    (["--budget-tokens", "0"], "is not a positive whole number"),
    (["--budget-tokens", "1.5"], "is not a positive whole number"),
    (["--cpus-per-trainer", "0"], "--cpus-per-trainer must be positive, got 0"),
    (["--cpus-per-trainer", "-2"], "--cpus-per-trainer must be positive, got -2"),
    (["--max-memory-gb", "0"], "--max-memory-gb must be positive, got 0"),
    (["--max-processes", "0"], "--max-processes must be positive, got 0"),
    (["--proposer", "foo"], "--proposer must be 'mutate', 'llm' or 'package.module:Class', got 'foo'"),
    (["--proposer", "nosuch.mod:Cls"], "cannot import 'nosuch.mod'"),
    (["--proposer", "toys:NoSuchClass"], "module 'toys' has no 'NoSuchClass'"),
    (["--rescreen"], "--rescreen gives close calls at a cheap rung one more run: it needs --ladder"),
])
def test_bad_flags_say_what_is_wrong(tmp_path, toy, args, message):
    r = invoke("run", "--target", toy, "--run-dir", tmp_path / "run", *args)
    assert r.exit_code != 0
    assert message in r.output
    assert not (tmp_path / "run" / "ledger").exists()


def test_resume_and_a_different_run_dir_contradict(tmp_path, toy):
    r = invoke("run", "--target", toy, "--resume", tmp_path / "a", "--run-dir", tmp_path / "b")
    assert r.exit_code == 2 and "do not also pass a different --run-dir" in r.output


def test_resume_of_a_dir_without_a_run_is_refused(tmp_path, toy):
    (tmp_path / "empty").mkdir()
    r = invoke("run", "--target", toy, "--resume", tmp_path / "empty")
    assert r.exit_code == 1 and "holds no run" in r.output


def test_a_metric_pattern_that_never_matches_stops_the_run_with_the_log(ray_local, tmp_path, toy):
    r = invoke("run", "--target", toy, "--run-dir", tmp_path / "run", "--metric-pattern", r"^loss:\s*(\S+)",
               "--max-experiments", "3", "--trainers", "1")
    assert r.exit_code == 1
    assert "the unmodified target failed (no_metric)" in r.output and "log:" in r.output
    rows = ledger.load(tmp_path / "run")  # nothing lost: the failed baseline is a row
    assert rows[rows.decision == "baseline"].status.tolist() == ["no_metric"]


def test_a_baseline_out_of_memory_under_max_memory_gb_points_at_the_flag_not_the_target(ray_local, tmp_path, toy):
    """The unmodified target cannot even load its interpreter under --max-memory-gb 0.001: the stop names the flag
    as the thing to change, not "Fix the target", which would send the user to the wrong place."""
    r = invoke("run", "--target", toy, "--run-dir", tmp_path / "run", "--max-memory-gb", "0.001", "--sandbox", "none",
               "--max-experiments", "1", "--trainers", "1", "--gpus-per-trainer", "0", "--cpus-per-trainer", "1")
    assert r.exit_code == 1 and "the unmodified target failed (oom)" in r.output, r.output
    assert "raise --max-memory-gb" in r.output and "memory limit above is what to change" in r.output, r.output
    assert "Fix the target" not in r.output


def test_a_run_command_that_does_not_exist_is_reported(ray_local, tmp_path, toy):
    r = invoke("run", "--target", toy, "--run-dir", tmp_path / "run", "--command", "no-such-program-xyz train.py",
               "--trainers", "1")
    assert r.exit_code == 1
    assert "failed (crash)" in r.output and "cannot start 'no-such-program-xyz'" in r.output


def test_too_many_trainers_for_the_cluster(ray_local, tmp_path, toy):
    r = invoke("run", "--target", toy, "--run-dir", tmp_path / "run", "--trainers", "9", "--gpus-per-trainer", "0.5")
    assert r.exit_code == 1 and "needs 4.5 GPUs; the cluster has 4" in r.output


def test_a_run_that_failed_before_its_first_row_can_be_started_again(ray_local, tmp_path, toy):
    r = invoke("run", "--target", toy, "--run-dir", tmp_path / "run", "--trainers", "9", "--gpus-per-trainer", "0.5")
    assert r.exit_code == 1 and not (tmp_path / "run").exists()  # refused after Ray started, before any row: gone
    (tmp_path / "run").mkdir()  # a run killed before its first row leaves run.json (and maybe a journal)
    (tmp_path / "run" / "run.json").write_text('{"run_id": "old"}')
    r = invoke("run", "--target", toy, "--run-dir", tmp_path / "run", "--max-experiments", "1", "--trainers", "1",
               "--acceptance", "greedy")
    assert r.exit_code == 0, r.output
    assert len(ledger.load(tmp_path / "run")) == 2


def test_resume_goes_on_with_the_settings_the_run_was_started_with(ray_local, tmp_path, toy):
    run_dir = tmp_path / "run"
    r = invoke("run", "--target", toy, "--run-dir", run_dir, "--max-experiments", "2", "--trainers", "1",
               "--acceptance", "greedy", "--budget-tokens", "1000", "--seed", "5")
    assert r.exit_code == 0, r.output
    # only --max-experiments given now: greedy, the token budget, one trainer and the seed come from run.json
    r = invoke("run", "--resume", run_dir, "--max-experiments", "4")
    assert r.exit_code == 0, r.output
    assert "resuming with the settings the run was started with; changed now: --max-experiments" in r.output
    df = ledger.load(run_dir)
    ran = df[df.decision != "skip"]
    assert (ran.role == "screen").sum() == 4
    assert (ran.role == "baseline").sum() == 1  # confirm mode (the default) would have added baseline repeats
    assert set(ran.decision) <= {"baseline", "keep", "discard"} and set(ran.seed) == {5}
    assert ran.trainer.nunique() == 1
    config = json.loads((run_dir / "run.json").read_text())["config"]
    assert config["acceptance"] == "greedy" and config["target_overrides"]["budget_tokens"] == 1000
    r = invoke("show", run_dir, "e00001")  # what bounded the run: its tokens, not the unused wall-clock budget
    assert r.exit_code == 0 and "budget 1,000 tokens" in r.output


def test_a_damaged_run_json_is_reported_on_resume(tmp_path, toy):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{not json")
    r = invoke("run", "--resume", tmp_path / "run")
    assert r.exit_code == 1 and "is not valid JSON" in r.output
    (tmp_path / "run" / "run.json").write_text("{}")
    r = invoke("run", "--target", toy, "--resume", tmp_path / "run")
    assert r.exit_code == 1 and "is not a run's run.json" in r.output


def test_run_then_ledger_best_status_and_a_refused_rerun(ray_local, tmp_path, toy):
    run_dir = tmp_path / "run"
    r = invoke("run", "--target", toy, "--run-dir", run_dir, "--max-experiments", "6", "--trainers", "2")
    assert r.exit_code == 0, r.output
    assert "finished after" in r.output and "best val_bpb:" in r.output
    df = ledger.load(run_dir)
    ran = df[df.decision != "skip"]
    assert (ran.role == "screen").sum() == 6 and (ran.role == "baseline").sum() >= 3  # default: confirm mode
    assert ran[ran.role == "baseline"].noise.dropna().size >= 1

    r = invoke("ledger", run_dir)
    assert r.exit_code == 0 and "baseline" in r.output and "e00000" in r.output

    r = invoke("best", run_dir, "--export", tmp_path / "best")
    assert r.exit_code == 0 and "lineage:" in r.output
    newest = df[df.files.notna() & (df.best_version == df.best_version.max())].iloc[0]  # the newest best's files
    assert (tmp_path / "best" / "train.py").read_text() == newest.files["train.py"]
    assert f"version {df.best_version.max()}" in r.output

    r = invoke("status", run_dir)
    assert r.exit_code == 0 and "state: finished" in r.output
    snap = json.loads((run_dir / "status.json").read_text())
    assert snap["experiments"] == 6 and snap["running"] == []

    # the same run dir again, without --resume: refused, and the ledger is untouched
    r = invoke("run", "--target", toy, "--run-dir", run_dir, "--max-experiments", "1")
    assert r.exit_code == 1 and "already holds a run's ledger; pass --resume" in r.output
    assert len(ledger.load(run_dir)) == len(df)


def test_reading_commands_on_a_folder_that_is_no_run(tmp_path):
    r = invoke("ledger", tmp_path)
    assert r.exit_code == 1 and "holds no ledger" in r.output
    r = invoke("status", tmp_path)
    assert r.exit_code == 1 and "has no status.json" in r.output
    r = invoke("ledger", tmp_path, "--status", "bogus")  # the choices are listed
    assert r.exit_code == 2 and "'bogus' is not one of" in r.output and "'metric_mismatch'" in r.output
    r = invoke("ledger", tmp_path, "--limit", "-2")
    assert r.exit_code == 2 and "-2 is not in the range x>=0" in r.output


def test_best_git_writes_the_kept_changes_as_commits(ray_local, tmp_path, toy):
    import subprocess
    git = ["git", "-C", str(toy), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "the target"], check=True)
    run_dir = tmp_path / "run"
    r = invoke("run", "--target", toy, "--run-dir", run_dir, "--max-experiments", "4", "--trainers", "1",
               "--acceptance", "greedy")
    assert r.exit_code == 0, r.output
    from ar_ray.ledger.analysis import best_path
    on_path = len(best_path(ledger.load(run_dir))) - 1  # kept changes the best is built on
    r = invoke("best", run_dir, "--git", "ar-ray/best")
    assert r.exit_code == 0, r.output
    log = subprocess.run(git + ["log", "--format=%s", "ar-ray/best"], capture_output=True, text=True, check=True)
    assert on_path >= 1 and len(log.stdout.splitlines()) == on_path + 1  # one commit per kept change, on the target's
    head = subprocess.run(git + ["rev-parse", "--abbrev-ref", "HEAD"], capture_output=True, text=True).stdout
    assert head.strip() != "ar-ray/best"  # the user's checkout is untouched
    r = invoke("best", run_dir, "--git", "ar-ray/best")
    assert r.exit_code == 1 and "exists" in r.output


def test_mutate_with_nothing_to_tune_is_refused_before_ray_starts(tmp_path, monkeypatch):
    """A script with no literal settings: `ar-ray run` says what mutate looks for and how to declare knobs, with exit
    code 2, before it starts Ray or writes a run dir."""
    import ar_ray.engine.cluster as cluster
    monkeypatch.setattr(cluster, "connect", lambda *a, **k: pytest.fail("Ray was started"))
    train = "import time\ntime.sleep(0.5)\nprint('---')\nprint('val_bpb: 1.0')\n"
    target = make_toy(tmp_path / "target", train=train)
    r = invoke("run", "--target", target, "--run-dir", tmp_path / "run", "--trainers", "1", "--max-experiments", "5")
    assert r.exit_code == 2, r.output
    out = " ".join(r.output.split())
    assert "the mutate proposer has nothing to tune in target 'target'" in out
    assert "no mutable hyperparameters found in the editable file(s) train.py" in out
    assert "top-level `name = literal` assignments" in out and "[knobs]" in out and "API key" not in out
    assert not (tmp_path / "run").exists()
    # a broken contract is refused the same way
    (target / "ar-ray.toml").write_text("[knobs]\nlr = [1, 0]\n")
    r = invoke("run", "--target", target, "--run-dir", tmp_path / "run")
    assert r.exit_code == 2 and "[knobs] lr: the range [1, 0] is empty" in r.output, r.output
    # a declared knob that is not in the files is named
    (target / "ar-ray.toml").write_text("[knobs]\nlr = [0.1, 1]\n")
    r = invoke("run", "--target", target, "--run-dir", tmp_path / "run")
    assert r.exit_code == 2 and "knob(s) 'lr' declared under [knobs]" in r.output, r.output
    assert not (tmp_path / "run").exists()


def test_a_proposer_that_cannot_work_stops_the_run_and_keeps_what_ran(ray_local, tmp_path):
    """Past the check (here: the engine called directly), a mutate proposer that cannot work stops the run after
    the first ten failures, every failure is a row, the stop message speaks of mutate's knobs (not of an API key),
    and the baseline that was running finishes and is recorded: `best`, `show` and `report` work on the run dir."""
    from ar_ray.engine.config import RunConfig
    from ar_ray.engine.driver import RunAborted
    from ar_ray.engine.run import execute

    train = "import time\ntime.sleep(1.0)\nprint('---')\nprint('val_bpb: 1.25')\n"
    mark = new_mark()
    target = make_toy(tmp_path / "target", f"[target]\nenv = {{ AR_TEST_MARK = '{mark}' }}\n", train=train)
    run_dir = tmp_path / "run"
    states = []
    with pytest.raises(RunAborted) as e:
        execute(RunConfig(target=str(target), run_dir=str(run_dir), trainers=1, gpus_per_trainer=1, max_experiments=5),
                on_event=lambda kind, driver, row: states.append(row["state"]) if kind == "finished" else None)
    message = str(e.value)
    assert "the first 10 proposals all failed" in message and "no mutable hyperparameters found" in message
    assert "API key" not in message and "declare them under [knobs] in the target's ar-ray.toml" in message
    assert states == ["aborted"]
    df = ledger.load(run_dir)  # (proposals that came back while the baseline finished are rows too)
    assert (df.status == "proposer_error").sum() >= 10 and not ((df.role == "screen") & (df.decision != "skip")).any()
    base = df[df.role == "baseline"]
    assert base.status.tolist() == ["ok"] and base.metric.tolist() == [1.25]  # before, it was killed and discarded
    r = invoke("best", run_dir)
    assert r.exit_code == 0 and "best val_bpb 1.250000" in r.output, r.output
    r = invoke("show", run_dir, base.experiment_id.iloc[0])
    assert r.exit_code == 0 and "status ok" in r.output, r.output
    r = invoke("report", run_dir)
    assert r.exit_code == 0, r.output
    wait_for(lambda: not marked_pids(mark), 30, "the aborted run's processes to be gone")
