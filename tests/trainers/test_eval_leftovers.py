"""The trusted evaluation's folder (trainers/evaluate.py: a copy of the target's read-only files in the temp dir)
never outlives its trainer: a real trainer process, running a toy target that declares `evaluate`, is SIGKILLed
while its run and evaluation wait, with and without its direct children (Ray SIGKILLs a dead worker's children),
and before its evaluation's reaper even started. Both sandbox modes; each case takes a few seconds."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers_targets import candidate, make_target, marked_pids, new_mark, ppid_of, wait_for  # noqa: E402

from trainers import evaluate  # noqa: E402
from trainers.sandbox import Sandbox, bwrap_problem  # noqa: E402
from trainers.trainer import Trainer, child_env  # noqa: E402

pytestmark = pytest.mark.timeout(60)

EVALUATE = """
import sys
print("evaluation ready", flush=True)
if sys.stdin.readline().strip() != "go":
    sys.exit(1)
print("val_bpb: 1.5")
"""
TOML = '[target]\neditable = ["train.py"]\nevaluate = "{python} ev.py {run_dir}"\nbudget_seconds = 30\n'
SLEEP = "import time\nprint('training', flush=True)\ntime.sleep(600)\n"
QUICK = "print('trained')\n"

# A trainer in a process of its own, as in a Ray worker: argv root, work, mode, mark, train.py, how. With how =
# die-after-mkdtemp it SIGKILLs itself as soon as the evaluation's folder exists (before its reaper starts).
TRAINER = r"""
import os, signal, sys, tempfile
from ar_ray.target import load_target
from helpers_targets import candidate
from trainers import evaluate
from trainers.sandbox import Sandbox
from trainers.trainer import Trainer
root, work, mode, mark, train, how = sys.argv[1:]
if how == "die-after-mkdtemp":
    made = tempfile.mkdtemp
    def mkdtemp(*args, **kwargs):
        path = made(*args, **kwargs)
        if kwargs.get("prefix", "").startswith(evaluate.DIR_PREFIX):
            print("HOME", path, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return path
    tempfile.mkdtemp = mkdtemp
target = load_target(root, env={"AR_TEST_MARK": mark})
Trainer(target, work, box=Sandbox(mode=mode), grace_seconds=0.5).run(candidate(target, train=train))
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    if bwrap_problem():
        pytest.fail(f"bubblewrap is needed here: {bwrap_problem()}")
    root = tmp_path_factory.mktemp("evtarget") / "target"
    make_target(root, QUICK, toml=TOML)
    (root / "ev.py").write_text(EVALUATE)
    return root


def start_trainer(root: Path, tmp_path: Path, mode: str, mark: str, train: str, how: str = "") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", TRAINER, str(root), str(tmp_path / "work"), mode, mark, train, how],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def homes(pids: list[int]) -> list[str]:
    """The evaluation folders among the working directories of `pids` (the evaluation's reaper works in its)."""
    out = []
    for p in pids:
        try:
            cwd = os.readlink(f"/proc/{p}/cwd")
        except OSError:
            continue
        if os.path.basename(cwd).startswith(evaluate.DIR_PREFIX):
            out.append(cwd)
    return out


def running(mark: str, script: bytes) -> bool:
    """Whether `script` itself runs (not a reaper or bwrap with it in its argv) among the marked processes."""
    for p in marked_pids(mark):
        try:
            argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if script in argv and not any(a.endswith((b"reaper.py", b"bwrap")) for a in argv):
            return True
    return False


@pytest.mark.parametrize("mode", ["bwrap", "none"])
@pytest.mark.parametrize("kill", ["the trainer", "the trainer and its children"])
def test_a_sigkilled_trainer_leaves_no_evaluation_folder(root, tmp_path, mode, kill):
    mark = new_mark()
    proc = start_trainer(root, tmp_path, mode, mark, SLEEP)
    try:
        wait_for(lambda: running(mark, b"ev.py") and running(mark, b"train.py"), 20, "the run and its evaluation")
        children = [p for p in marked_pids(mark) if ppid_of(p) == proc.pid]  # the run's and the evaluation's reapers
        [home] = homes(children)
        assert {"ev.py", "prepare.py"} <= set(os.listdir(home))
        victims = [*children, proc.pid] if kill == "the trainer and its children" else [proc.pid]
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
        wait_for(lambda: not marked_pids(mark), 15, "no process left")
        wait_for(lambda: not os.path.exists(home), 10, f"{home} to be removed after its trainer died")
    finally:
        proc.kill()
        proc.wait()
        for pid in marked_pids(mark):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("mode", ["bwrap", "none"])
def test_a_folder_whose_trainer_died_before_its_reaper_started_goes_at_the_next_evaluation(root, tmp_path, mode):
    """The worst moment: the folder exists, nothing was started that could remove it. The next evaluation that
    starts on the node (any trainer's) removes the folders of trainers that are gone; a live trainer's stays."""
    mark = new_mark()
    proc = start_trainer(root, tmp_path, mode, mark, SLEEP, how="die-after-mkdtemp")
    out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == -signal.SIGKILL, out
    home = out.split("HOME ", 1)[1].split()[0]
    assert os.path.isdir(home) and not marked_pids(mark)
    (tmp_path / "t2").mkdir()
    (tmp_path / "t2" / "ev.py").write_text(EVALUATE)
    target = make_target(tmp_path / "t2", QUICK, toml=TOML, env={"AR_TEST_MARK": mark})
    trainer = Trainer(target, str(tmp_path / "work2"), box=Sandbox(mode=mode), grace_seconds=0.5)
    trainer.sandbox_note()
    live = evaluate.start(trainer, tmp_path, child_env(target, {}))  # this process's: it stays
    try:
        res = trainer.run(candidate(target))
        assert res.status == "ok" and res.metric == 1.5, (res.status, res.error_tail)
        assert not os.path.exists(home), f"{home} of a dead trainer is still there"
        assert live.home.is_dir()
    finally:
        live.discard()
    assert not live.home.exists()
    wait_for(lambda: not marked_pids(mark), 10, "no process left")
