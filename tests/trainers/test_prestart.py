"""Pre-started children (trainers/prestart.py, trainers/warm_child.py): real trainers, real reapers, real bubblewrap,
a real Ray actor. The next run's child imports the harness while the current run trains, runs the next candidate
as `python train.py` would, and a child that is discarded or orphaned leaves no process, even a SIGTERM-immune
grandchild in a session of its own."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from ar_ray.target import TargetError
from helpers_targets import candidate, make_target, marked_pids, new_mark, ppid_of, wait_for
from trainers import prestart, sandbox
from trainers.sandbox import Sandbox
from trainers.trainer import Trainer

pytestmark = pytest.mark.timeout(120)
GPT = Path(__file__).resolve().parents[2] / "trainers" / "gpt"

# The harness records what it saw when it was imported; with HARNESS_FORK set it also leaves a grandchild in a
# session of its own that ignores SIGTERM (what a careless harness might do at import).
HARNESS = """
import os, signal, time
SEED_AT_IMPORT = os.environ.get("AR_SEED")
PID = os.getpid()
if os.environ.get("HARNESS_FORK") and os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(3600)
    os._exit(0)
"""

TRAIN = """
import atexit, os, sys
warm = "harness" in sys.modules
import harness
MODE = "ok"
print("warm" if warm else "cold", "| seed at import", harness.SEED_AT_IMPORT, "| seed", os.environ["AR_SEED"],
      "| pid", harness.PID == os.getpid(), "| argv", sys.argv, "| path0", sys.path[0] == os.getcwd(),
      "| main", __name__, "| file", os.path.basename(__file__), "| run dir", os.getcwd() == os.environ["AR_RUN_DIR"],
      flush=True)
atexit.register(lambda: print("atexit ran", flush=True))
if MODE == "crash":
    raise ValueError("boom on purpose")
if MODE == "exit":
    sys.exit(3)
print("val_bpb: 1.5")
"""


def modes():
    return [pytest.param("none"), pytest.param("bwrap", marks=pytest.mark.skipif(
        sandbox.bwrap_problem() is not None, reason=str(sandbox.bwrap_problem())))]


def toy(tmp_path: Path, mode: str = "none", prestart_modules=("harness",), fork: bool = False, name="t-warm"):
    mark = new_mark()
    env = {"AR_TEST_MARK": mark, **({"HARNESS_FORK": "1"} if fork else {})}
    (tmp_path / "target").mkdir(parents=True)
    (tmp_path / "target" / "harness.py").write_text(HARNESS)  # a read-only file: the harness
    target = make_target(tmp_path / "target", TRAIN, prepare="VOCAB = 42\n", env=env,
                         prestart=list(prestart_modules) or None)
    trainer = Trainer(target, str(tmp_path / "work"), name=name, grace_seconds=0.3, box=Sandbox(mode=mode))
    return target, trainer, mark


def warm_processes(mark: str) -> list[int]:
    """The run's processes running warm_child.py: a pre-started child, and what its harness forked."""
    out = []
    for pid in marked_pids(mark):
        try:
            if b"warm_child.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
        except OSError:
            pass
    return out


def slots(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "work").glob(prestart.SLOT + "*"))


def with_mode(target, mode: str) -> str:
    return target.read_editable()["train.py"].replace('MODE = "ok"', f'MODE = "{mode}"')


@pytest.mark.parametrize("mode", modes())
def test_the_next_run_goes_in_a_child_that_imported_the_harness_before_the_candidate_was_known(tmp_path, mode):
    target, trainer, mark = toy(tmp_path, mode)
    try:
        first = trainer.run(candidate(target, eid="e1", seed=11))
        assert first.status == "ok" and first.metric == 1.5
        assert Path(first.log_path).read_text().startswith("cold")  # nothing ran before the first
        assert len(slots(tmp_path)) == 1  # the next run's child, started while e1 ran

        second = trainer.run(candidate(target, eid="e2", seed=22))
        assert second.status == "ok" and second.metric == 1.5 and second.returncode == 0
        log = Path(second.log_path)
        assert log == tmp_path / "work" / "e2" / "log.txt"  # the run dir has the experiment's name
        text = log.read_text()
        assert "ar-ray: pre-started child: harness imported" in text
        # imported before the candidate (and its seed) existed; then ran as `python train.py` would
        assert ("warm | seed at import None | seed 22 | pid True | argv ['train.py'] | path0 True | main __main__ "
                "| file train.py | run dir True") in text
        assert "atexit ran" in text  # the fast exit still runs atexit handlers
        assert sorted(p.name for p in log.parent.iterdir()) == ["log.txt"]  # cleared as a cold run's dir
        assert trainer._warm.used == 1

        crash = trainer.run(candidate(target, train=with_mode(target, "crash"), eid="e3"))
        assert crash.status == "crash" and crash.returncode == 1
        assert "ValueError: boom on purpose" in crash.error_tail
        assert "warm_child" not in Path(crash.log_path).read_text()  # the traceback is the run's own
        code = trainer.run(candidate(target, train=with_mode(target, "exit"), eid="e4"))
        assert code.returncode == 3 and "warm |" in Path(code.log_path).read_text()
        assert trainer._warm.used == 3
    finally:
        trainer.close()
    assert slots(tmp_path) == []
    assert marked_pids(mark) == []


@pytest.mark.skipif(sandbox.bwrap_problem() is not None, reason=str(sandbox.bwrap_problem()))
def test_prestart_works_when_ar_ray_itself_lives_under_tmp(tmp_path, tmp_path_factory, monkeypatch):
    """bubblewrap gives each run a private empty /tmp: a checkout under /tmp (installed editable: no checkout on
    sys.path) had its warm_child.py hidden, so every pre-started child exited with code 2 and every run started
    cold, silently (or, when the run came before the child had failed, crashed with "can't open file"). The harness
    is bound back into the sandbox."""
    checkout = tmp_path_factory.mktemp("checkout") / "trainers"  # under /tmp, beside (not in) the run's folders
    checkout.mkdir()
    harness = checkout / "warm_child.py"
    harness.write_text(Path(prestart.WARM_CHILD).read_text())
    assert str(harness).startswith("/tmp/")
    monkeypatch.setattr(prestart, "WARM_CHILD", str(harness))
    target, trainer, mark = toy(tmp_path, "bwrap")
    try:
        assert trainer.run(candidate(target, eid="e1", seed=11)).status == "ok"
        second = trainer.run(candidate(target, eid="e2", seed=22))
        assert second.status == "ok" and "ar-ray: pre-started child: harness imported" in Path(second.log_path).read_text()
        assert trainer._warm.used == 1
    finally:
        trainer.close()
    assert marked_pids(mark) == []


def test_a_run_whose_environment_differs_from_the_guess_starts_cold(tmp_path):
    target, trainer, mark = toy(tmp_path)
    try:
        trainer.run(candidate(target, eid="e1"))
        other = trainer.run(candidate(target, eid="e2", knobs={"depth": "4"}))  # AR_DEPTH: not what it was started with
        assert other.status == "ok" and Path(other.log_path).read_text().startswith("cold")
        assert trainer._warm.used == 0 and trainer._warm.discarded == 1
        same = trainer.run(candidate(target, eid="e3", knobs={"depth": "4"}))  # guessed from e2 this time
        assert Path(same.log_path).read_text().startswith("ar-ray: pre-started child")
    finally:
        trainer.close()
    assert marked_pids(mark) == [] and slots(tmp_path) == []


@pytest.mark.parametrize("mode", modes())
def test_a_discarded_prestarted_child_leaves_no_process_even_a_sigterm_immune_grandchild(tmp_path, mode):
    target, trainer, mark = toy(tmp_path, mode, fork=True)
    try:
        assert trainer.run(candidate(target, eid="e1")).status == "ok"
        # the next run's child and the grandchild its harness left, in a session of its own, ignoring SIGTERM
        wait_for(lambda: len(warm_processes(mark)) >= 2, 30, "the pre-started child and its grandchild")
        assert len(slots(tmp_path)) == 1
        trainer.stop()  # the driver stops the trainer: no candidate will come
        wait_for(lambda: marked_pids(mark) == [], 10, "no process of the pre-started child left")
        assert slots(tmp_path) == []
    finally:
        trainer.close()
        for pid in marked_pids(mark):
            os.kill(pid, signal.SIGKILL)


def test_a_target_without_prestart_runs_every_child_cold(tmp_path):
    target, trainer, mark = toy(tmp_path, prestart_modules=())
    assert target.prestart == ()
    for eid in ("e1", "e2"):
        res = trainer.run(candidate(target, eid=eid))
        assert res.status == "ok" and Path(res.log_path).read_text().startswith("cold")
        assert slots(tmp_path) == []
    assert trainer._warm.used == 0 and marked_pids(mark) == []


@pytest.mark.parametrize("mode", modes())
def test_a_trainer_actor_runs_warm_across_calls_and_its_death_takes_the_prestarted_child(tmp_path, mode, ray_local):
    ray = ray_local
    from trainers.actor import TrainerActor
    target, _, mark = toy(tmp_path, mode, fork=True)
    actor = ray.remote(TrainerActor).options(max_concurrency=2, max_restarts=0, num_gpus=0) \
        .remote(target, str(tmp_path / "work"), "t-ray", grace_seconds=0.3, box=Sandbox(mode=mode))
    try:
        ray.get(actor.run.remote(candidate(target, eid="e1")), timeout=60)
        res = ray.get(actor.run.remote(candidate(target, eid="e2")), timeout=60)  # (another call, maybe another thread)
        assert res.status == "ok" and Path(res.log_path).read_text().startswith("ar-ray: pre-started child")
        wait_for(lambda: len(warm_processes(mark)) >= 2, 30, "the next pre-started child and its grandchild")
        marked = marked_pids(mark)  # the trainer (the actor's worker) is the parent of the child's reaper
        actor_pid = next(ppid_of(p) for p in marked if ppid_of(p) not in marked)
        assert actor_pid != os.getpid() and ppid_of(actor_pid) != os.getpid()
        os.kill(actor_pid, signal.SIGKILL)  # the trainer dies without a word (Ray kills a worker like this)
        wait_for(lambda: marked_pids(mark) == [], 20, "the pre-started child to go with its trainer")
    finally:
        ray.kill(actor)
        for pid in marked_pids(mark):
            os.kill(pid, signal.SIGKILL)


def test_the_gpt_targets_val_bpb_at_a_fixed_seed_is_the_same_prestarted_and_cold(tmp_path, monkeypatch):
    for k, v in {"AR_CACHE_DIR": str(tmp_path / "cache"), "AR_VOCAB_SIZE": "512", "AR_PRESET": "cpu",
                 "AR_THREADS": "1"}.items():
        monkeypatch.setenv(k, v)
    from ar_ray.target import load_target
    target = load_target(GPT, budget_tokens=4096, prestart=["torch", "prepare"])
    trainer = Trainer(target, str(tmp_path / "work"), name="t-gpt", grace_seconds=1.0,
                      box=Sandbox(mode="auto"))
    try:
        cold = trainer.run(candidate(target, eid="e1", seed=7))
        warm = trainer.run(candidate(target, eid="e2", seed=7))
    finally:
        trainer.close()
    assert cold.status == "ok" and warm.status == "ok", (cold.error_tail, warm.error_tail)
    assert "pre-started child: torch, prepare imported" in Path(warm.log_path).read_text()
    assert "pre-started" not in Path(cold.log_path).read_text()
    assert warm.metric == cold.metric  # the same number, not a close one
    assert slots(tmp_path) == []


def test_prestart_is_checked_when_the_target_loads(tmp_path):
    make_target(tmp_path / "t", TRAIN)
    from ar_ray.target import load_target
    with pytest.raises(TargetError, match="an editable file"):
        load_target(tmp_path / "t", prestart=["train"])
    with pytest.raises(TargetError, match="prestart needs command"):
        load_target(tmp_path / "t", prestart=["prepare"], command="bash run.sh")
    with pytest.raises(TargetError, match="list of module names"):
        load_target(tmp_path / "t", prestart="prepare")
    assert load_target(tmp_path / "t", prestart=["prepare", "json.decoder"]).prestart == ("prepare", "json.decoder")
