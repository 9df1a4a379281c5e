"""Tests for trainers.trainer: real children under the real reaper, real signals, outcomes, no survivors.

Every toy target puts AR_TEST_MARK=<uuid> in its children's environment, so the
tests can scan /proc for any process of a run that outlived it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import uuid
from pathlib import Path

import pytest

from helpers_targets import SLEEPER_FN, alive, candidate, make_target, marked_pids, new_mark, ppid_of, wait_for
from trainers.sandbox import Sandbox
from trainers.trainer import SetupError, Trainer, is_secret_name

pytestmark = pytest.mark.timeout(60)
# These tests are about the trainer's own mechanics, and their toys talk to the test through files in tmp_path:
# they run unconfined. tests/test_sandbox.py runs hostile candidates under bubblewrap.
UNCONFINED = Sandbox(mode="none")

OK_TRAIN = """
print("val_bpb: 9.0")
print("---")
print("val_bpb: 1.25")
"""


def toy(tmp_path: Path, train: str, **overrides):
    """(target, trainer, mark) for a toy target whose children carry a fresh marker."""
    mark = new_mark()
    grace = overrides.pop("grace", 0.3)
    env = {"AR_TEST_MARK": mark, **overrides.pop("env", {})}
    target = make_target(tmp_path / "target", train, env=env, **overrides)
    trainer = Trainer(target, str(tmp_path / "work"), name="t-test", grace_seconds=grace, box=UNCONFINED)
    return target, trainer, mark


def run_toy(tmp_path: Path, train: str, **overrides):
    target, trainer, mark = toy(tmp_path, train, **overrides)
    res = trainer.run(candidate(target))
    assert marked_pids(mark) == [], "a process of the run outlived run()"
    return res


# -- 1. ok ------------------------------------------------------------------------------------

def test_ok_summary_metric_fields_cleanup_and_env(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leak")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "tok-must-not-leak")
    monkeypatch.setenv("AR_TEST_HARMLESS", "passes-through")
    dump = tmp_path / "env.json"
    train = f"""
        import json, os
        json.dump(dict(os.environ), open({str(dump)!r}, "w"))
        os.makedirs("ckpt", exist_ok=True)
        open("ckpt/model.bin", "wb").write(b"x" * 100)
        open("scratch.txt", "w").write("junk")
        open(os.environ["AR_RESULT_FILE"], "w").write('{{"val_bpb": 0.75}}')
        print("step 1 loss 3.0")
        print("val_bpb: 2.5")
        print("early_key: 7")
        print("---")
        print("not a summary line")
        print("val_bpb: 0.9")
        print("train_loss: 1.5")
        print("peak_vram_mb: 0.0")
        print("val_bpb: 0.75")
        """
    target, trainer, mark = toy(tmp_path, train, budget_seconds=7)
    cand = candidate(target, eid="exp-ok", seed=123)
    res = trainer.run(cand)

    assert res.status == "ok", res.error_tail
    assert res.metric == 0.75  # the LAST matching line
    assert res.metrics == {"val_bpb": "0.75", "train_loss": "1.5", "peak_vram_mb": "0.0"}
    assert res.returncode == 0 and res.error_tail == ""
    assert res.experiment_id == "exp-ok"
    assert (res.trainer, res.gpu_model) == ("t-test", "cpu")
    assert res.node == trainer.node and res.node
    assert res.child_seconds > 0 and res.overhead_seconds >= 0
    assert res.ended_at >= res.started_at
    log = Path(res.log_path)
    assert log.is_file() and "early_key: 7" in log.read_text() and "val_bpb: 0.75" in log.read_text()
    assert sorted(p.name for p in log.parent.iterdir()) == ["log.txt", "result.json"]
    assert trainer.status()["running"] is None and trainer.status()["completed"] == 1

    env = json.loads(dump.read_text())
    assert env["AR_SEED"] == "123"
    assert env["AR_BUDGET_SECONDS"] == "7"
    assert env["AR_RESULT_FILE"] == str(log.parent / "result.json")
    assert env["AR_EXPERIMENT_ID"] == "exp-ok"
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["AR_TEST_MARK"] == mark  # target env reaches the child
    assert env["AR_TEST_HARMLESS"] == "passes-through"  # the filter is not "drop everything"
    assert "OPENAI_API_KEY" not in env and "RAY_AUTH_TOKEN" not in env
    assert not any("must-not-leak" in v for v in env.values())


def test_keys_named_without_a_marker_do_not_reach_the_child(tmp_path, monkeypatch):
    """A key in a variable such as VLLM_KEY (the README's api_key_env example) is scrubbed like OPENAI_API_KEY:
    candidate code is LLM-written and its log tail goes back into the ledger and the prompts."""
    for name in ("VLLM_KEY", "OPENROUTER_KEY", "vllmKey", "MY_KEY_FILE"):
        monkeypatch.setenv(name, f"{name}-must-not-leak")
    monkeypatch.setenv("MY_SETTING", "stays-behind")
    monkeypatch.setenv("KEYBOARD_LAYOUT", "us")  # KEY is only part of a word: not a secret, yet not allowlisted
    dump = tmp_path / "env.json"
    train = f"""
        import json, os
        json.dump(dict(os.environ), open({str(dump)!r}, "w"))
        print("val_bpb: 1.0")
        """
    res = run_toy(tmp_path, train)
    assert res.status == "ok", res.error_tail
    env = json.loads(dump.read_text())
    assert not {"VLLM_KEY", "OPENROUTER_KEY", "vllmKey", "MY_KEY_FILE"} & set(env)
    assert not any("must-not-leak" in v for v in env.values())
    assert "MY_SETTING" not in env and "KEYBOARD_LAYOUT" not in env  # an allowlist: unknown names stay behind
    assert env["PATH"] == os.environ["PATH"]


@pytest.mark.parametrize("name,secret", [
    ("VLLM_KEY", True), ("OPENROUTER_KEY", True), ("KEY", True), ("MY_KEY_FILE", True), ("OPENAI_APIKEY", True),
    ("SERVICE_KEYS", True), ("OPENAI_KEY2", True), ("vllm_key", True), ("vllmKey", True), ("my-key", True),
    ("OPENAI_API_KEY", True), ("HF_TOKEN", True), ("DB_PASSWORD", True), ("AWS_PROFILE", True),
    ("PATH", False), ("MY_SETTING", False), ("HOME", False), ("CUDA_VISIBLE_DEVICES", False),
    ("MONKEY", False), ("KEYBOARD_LAYOUT", False), ("KEYRING_BACKEND", False), ("TURNKEY", False),
    ("DB_AUTH", True), ("MYSQL_PWD", True), ("DB_PASS", True), ("DATABASE_URL", True), ("BASIC_AUTH", True),
    ("HTTP_AUTHORIZATION", True), ("PASSPHRASE", True), ("GH_PAT", True), ("SENTRY_DSN", True), ("REDIS_URL", True),
    ("PWD", False), ("GIT_AUTHOR_NAME", False), ("PATCH_LEVEL", False), ("BASE_URL", False),
])
def test_is_secret_name(name, secret):
    assert is_secret_name(name) is secret


def test_candidate_knobs_and_budget_reach_the_child(tmp_path):
    dump = tmp_path / "env.json"
    train = f"""
        import json, os
        json.dump(dict(os.environ), open({str(dump)!r}, "w"))
        print("val_bpb: 1.0")
        """
    target, trainer, _ = toy(tmp_path, train)
    res = trainer.run(candidate(target, budget_seconds=3, knobs={"depth": "4"}))
    assert res.status == "ok", res.error_tail
    env = json.loads(dump.read_text())
    assert env["AR_BUDGET_SECONDS"] == "3" and env["AR_DEPTH"] == "4"


def test_the_budget_tokens_placeholder_agrees_with_the_env(tmp_path):
    """A ladder rung's budget_tokens knob wins over the target's budget_tokens, in the command's {budget_tokens}
    as in AR_BUDGET_TOKENS."""
    train = """
        import os, sys
        print("argv", sys.argv[1:], "env", os.environ.get("AR_BUDGET_TOKENS"))
        print("val_bpb: 1.0")
        """
    target, trainer, _ = toy(tmp_path, train, command="{python} train.py {budget_tokens}", budget_tokens=400000)

    def seen(**kw):
        res = trainer.run(candidate(target, **kw))
        assert res.status == "ok", res.error_tail
        return Path(res.log_path).read_text().splitlines()[0]

    assert seen(knobs={"budget_tokens": "100000"}) == "argv ['100000'] env 100000"  # a cheap rung
    assert seen() == "argv ['400000'] env 400000"  # no rung: the target's budget
    target, trainer, _ = toy(tmp_path, train, command="{python} train.py {budget_tokens}")
    assert seen() == "argv [''] env None"  # no token budget at all


# -- 2-6. child outcomes ------------------------------------------------------------------------

def test_crash_error_tail_holds_the_exception(tmp_path):
    res = run_toy(tmp_path, """
        print("training...")
        def inner():
            raise ValueError("boom-7f3a in the model")
        inner()
        """)
    assert res.status == "crash" and res.metric is None and res.returncode == 1
    lines = res.error_tail.splitlines()
    assert lines[0].startswith("Traceback (most recent call last)")
    assert lines[-1] == "ValueError: boom-7f3a in the model"


def test_timeout_kills_a_child_that_ignores_sigterm(tmp_path):
    started = tmp_path / "started"
    train = SLEEPER_FN + f"""
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
sleeper({str(tmp_path / 'gc.pid')!r})
wait_file({str(tmp_path / 'gc.pid')!r})
open({str(started)!r}, "w").close()
while True:
    time.sleep(3600)
"""
    res = run_toy(tmp_path, train, timeout_seconds=1.5)
    assert started.exists(), "the child never got going: the test proves nothing"
    assert res.status == "timeout" and res.metric is None
    assert "hard timeout" in res.error_tail
    assert not alive(int((tmp_path / "gc.pid").read_text()))


def test_a_run_that_finished_before_the_limit_is_not_a_timeout_while_the_reaper_sweeps(tmp_path):
    """The child prints its metric and exits at once, leaving a grandchild that ignores SIGTERM: the reaper's sweep
    then waits its grace period (5 s), past the hard timeout (2 s). The run finished in time: it is ok, not timeout."""
    gc = tmp_path / "gc.pid"
    train = SLEEPER_FN + f"""
sleeper({str(gc)!r})
wait_file({str(gc)!r})
print("val_bpb: 1.25")
"""
    res = run_toy(tmp_path, train, timeout_seconds=2, grace=5)
    assert gc.exists(), "the grandchild never started: the test proves nothing"
    assert res.status == "ok" and res.metric == 1.25, (res.status, res.error_tail)
    assert res.child_seconds > 2, "the sweep did not outlast the limit: the test proves nothing"
    assert not alive(int(gc.read_text()))


def test_explicit_timeout_wins_over_the_candidate_budget(tmp_path):
    # --timeout must hold even when the driver passes --budget on every candidate.
    target, trainer, mark = toy(tmp_path, "import time\ntime.sleep(3600)\n", timeout_seconds=1.0)
    res = trainer.run(candidate(target, budget_seconds=5))  # 2 x 5 + 60 s if the budget won
    assert res.status == "timeout", res
    assert marked_pids(mark) == []


@pytest.mark.parametrize("train", [
    "x = []\nraise MemoryError()\n",
    "import sys\nprint('RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB')\nsys.exit(1)\n",
], ids=["MemoryError", "cuda-oom"])
def test_oom(tmp_path, train):
    res = run_toy(tmp_path, train)
    assert res.status == "oom" and res.metric is None and res.returncode == 1


@pytest.mark.parametrize("train,code", [
    ("import sys\nprint('step 10 loss 3.2')\nprint('FAIL: loss diverged (nan)')\nsys.exit(1)\n", 1),
    ("print('---')\nprint('val_bpb: nan')\n", 0),
], ids=["fail-line", "nan-metric"])
def test_diverged(tmp_path, train, code):
    res = run_toy(tmp_path, train)
    assert res.status == "diverged" and res.metric is None and res.returncode == code


def test_no_metric_when_the_line_is_missing(tmp_path):
    res = run_toy(tmp_path, "print('---')\nprint('train_loss: 1.0')\n")
    assert res.status == "no_metric" and res.metric is None and res.returncode == 0
    assert "train_loss: 1.0" in res.error_tail


def test_no_metric_when_the_pattern_never_matches(tmp_path):
    res = run_toy(tmp_path, OK_TRAIN, metric="result", metric_pattern=r"^result=(\S+)")  # (a name that says no direction)
    assert res.status == "no_metric" and res.metric is None
    assert res.metrics["val_bpb"] == "1.25"  # the summary is still parsed


# -- 7-9. trainer-side checks -----------------------------------------------------------------

def test_metric_mismatch_with_result_file(tmp_path):
    train = """
        import json, os
        json.dump({"val_bpb": 1.5}, open(os.environ["AR_RESULT_FILE"], "w"))
        print("val_bpb: 0.1")
        """
    res = run_toy(tmp_path, train, result_file=True)
    assert res.status == "metric_mismatch" and res.metric is None
    assert "1.5" in res.error_tail and "0.1" in res.error_tail


def test_result_file_agreeing_is_ok_and_missing_is_mismatch(tmp_path):
    good = """
        import json, os
        json.dump({"val_bpb": 0.5}, open(os.environ["AR_RESULT_FILE"], "w"))
        print("val_bpb: 0.5")
        """
    target, trainer, _ = toy(tmp_path, good, result_file=True)
    assert trainer.run(candidate(target)).metric == 0.5
    res = trainer.run(candidate(target, train="print('val_bpb: 0.5')\n"))
    assert res.status == "metric_mismatch" and res.metric is None


def test_tampered_readonly_file(tmp_path):
    train = """
        open("prepare.py", "w").write("VOCAB = 1  # easier eval\\n")
        print("val_bpb: 0.01")
        """
    res = run_toy(tmp_path, train)
    assert res.status == "tampered" and res.metric is None
    assert "prepare.py" in res.error_tail


def test_missing_command_is_a_crash_naming_it(tmp_path):
    res = run_toy(tmp_path, OK_TRAIN, command="definitely-not-a-command-xyz --flag")
    assert res.status == "crash" and res.metric is None and res.returncode == 127
    assert "definitely-not-a-command-xyz" in res.error_tail
    assert "No such file" in res.error_tail


# -- 9b. a run that breaks what the trainer reads or removes after it ---------------------------------
# The run dir is the candidate's to write: whatever it leaves there is its doing, reported as its status,
# never a hang or an exception (which the driver would take for a lost trainer and run again).

def _run_bounded(trainer, cand, seconds: float = 30):
    """run() in a thread: a run() that blocks (reading a FIFO) or raises fails the test plainly."""
    box = {}

    def go():
        try:
            box["res"] = trainer.run(cand)
        except BaseException as e:  # noqa: BLE001 (reported below)
            box["exc"] = e

    th = threading.Thread(target=go, daemon=True)
    th.start()
    th.join(seconds)
    assert not th.is_alive(), f"run() still blocked after {seconds} s"
    assert "exc" not in box, f"run() raised instead of reporting a status: {box.get('exc')!r}"
    return box["res"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("make, what", [("os.mkfifo(f)", "a FIFO"), ("os.symlink(outside, f)", "a symbolic link"),
                                        ("os.mkdir(f)", "a directory")])
def test_a_result_file_that_is_not_a_regular_file_is_tampered_not_a_hang(tmp_path, make, what):
    # (a link to a file outside the run dir that agrees with the metric: the old trainer followed it; a link to
    # /dev/zero would test the same, but on a trainer that follows links it eats memory until the OOM killer acts)
    outside = tmp_path / "elsewhere.json"
    outside.write_text('{"val_bpb": 0.75}')
    train = f"""
        import os
        f, outside = os.environ["AR_RESULT_FILE"], {str(outside)!r}
        {make}
        print("val_bpb: 0.75")
        """
    target, trainer, mark = toy(tmp_path, train, result_file=True, timeout_seconds=5)
    res = _run_bounded(trainer, candidate(target))
    assert res.status == "tampered" and res.metric is None
    assert res.error_tail == f"the result file is not a regular file: it is {what}"
    assert sorted(p.name for p in Path(res.log_path).parent.iterdir()) == ["log.txt"]  # (read again by reports)
    assert marked_pids(mark) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("make, what", [("os.remove(log)", "it is gone"),
                                        ("os.remove(log); os.mkfifo(log)", "it is now a FIFO"),
                                        ("os.remove(log); os.symlink(outside, log)", "it is now a symbolic link"),
                                        ("open(log + '.new', 'w').write('val_bpb: 0.1\\n'); "
                                         "os.rename(log + '.new', log)", "it is now another file")])
def test_a_log_removed_or_replaced_is_tampered_not_an_exception(tmp_path, make, what):
    outside = tmp_path / "elsewhere.txt"  # a log outside the run dir (as above: not /dev/zero)
    outside.write_text("val_bpb: 0.75\n")
    train = f"""
        import os
        print("val_bpb: 0.75", flush=True)
        log, outside = os.path.join(os.environ["AR_RUN_DIR"], "log.txt"), {str(outside)!r}
        {make}
        """
    target, trainer, mark = toy(tmp_path, train)
    res = _run_bounded(trainer, candidate(target))
    assert res.status == "tampered" and res.metric is None
    assert res.error_tail.startswith(f"log.txt was removed or replaced by the run: {what}"), res.error_tail
    log = Path(res.log_path)
    assert not os.path.lexists(log) or log.is_file() and not log.is_symlink()  # no FIFO or link left behind
    assert marked_pids(mark) == []


def test_folders_the_run_made_read_only_are_still_cleared(tmp_path, monkeypatch):
    """A non-root trainer cannot empty a folder the run chmod'ed 500; it gives it u+rwx back. (Root needs no
    permission, so as root the checks a non-root trainer meets are played by a stand-in for os.unlink/rmdir.)"""
    if os.geteuid() == 0:
        for name in ("unlink", "rmdir"):
            real = getattr(os, name)

            def checked(path, *, dir_fd=None, _real=real):
                parent = os.fstat(dir_fd) if dir_fd is not None else os.stat(os.path.dirname(os.path.abspath(path)))
                if parent.st_mode & 0o300 != 0o300:
                    raise PermissionError(13, "Permission denied", path)
                return _real(path, dir_fd=dir_fd)

            monkeypatch.setattr(os, name, checked)
    train = """
        import os
        os.makedirs("ckpt/inner/deep")
        open("ckpt/model.bin", "wb").write(b"x")
        open("ckpt/inner/deep/opt.bin", "wb").write(b"x")
        os.chmod("ckpt/inner/deep", 0o500)
        os.chmod("ckpt/inner", 0o500)
        os.chmod("ckpt", 0o500)
        print("val_bpb: 0.75")
        """
    res = run_toy(tmp_path, train)
    assert res.status == "ok" and res.metric == 0.75, res.error_tail
    assert res.error_tail == ""
    assert sorted(p.name for p in Path(res.log_path).parent.iterdir()) == ["log.txt"]


# -- 10. no descendant survives -----------------------------------------------------------------

def test_grandchildren_and_setsid_double_fork_are_killed(tmp_path):
    gc, ggc = str(tmp_path / "gc.pid"), str(tmp_path / "ggc.pid")
    # child -> grandchild (plain fork, ignores TERM) -> great-grandchild (setsid + double fork, ignores TERM)
    train = SLEEPER_FN + f"""
if os.fork() == 0:  # the grandchild
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sleeper({ggc!r}, setsid_double_fork=True)
        open({gc!r} + ".tmp", "w").write(str(os.getpid()))
        os.rename({gc!r} + ".tmp", {gc!r})
        while True:
            time.sleep(3600)
    finally:
        os._exit(0)
wait_file({gc!r})
wait_file({ggc!r})
print("---")
print("val_bpb: 1.0")
"""
    target, trainer, mark = toy(tmp_path, train)
    res = trainer.run(candidate(target))
    assert res.status == "ok", res.error_tail
    pids = [int(Path(p).read_text()) for p in (gc, ggc)]
    assert ppid_of(os.getpid())  # /proc is readable here
    assert not any(alive(p) for p in pids), f"descendants survived run(): {pids}"
    assert marked_pids(mark) == []


# -- 11-12. status() and stop() from another thread ---------------------------------------------

def _blocking_train(tmp_path: Path, ignore_term: bool) -> str:
    return f"""
import os, signal, time
{"signal.signal(signal.SIGTERM, signal.SIG_IGN)" if ignore_term else ""}
open({str(tmp_path / 'started')!r}, "w").close()
while not os.path.exists({str(tmp_path / 'go')!r}):
    time.sleep(0.01)
print("val_bpb: 2.0")
"""


def _run_in_thread(trainer, cand):
    box = {}
    th = threading.Thread(target=lambda: box.setdefault("res", trainer.run(cand)), daemon=True)
    th.start()
    return th, box


def test_status_answers_while_run_is_in_flight(tmp_path):
    target, trainer, mark = toy(tmp_path, _blocking_train(tmp_path, ignore_term=False))
    assert trainer.status()["running"] is None
    th, box = _run_in_thread(trainer, candidate(target, eid="exp-inflight"))
    wait_for((tmp_path / "started").exists, what="the child to start")
    st = trainer.status()
    assert st["trainer"] == "t-test" and st["gpu_model"] == "cpu" and st["completed"] == 0
    assert st["running"]["experiment_id"] == "exp-inflight" and st["running"]["elapsed"] >= 0
    (tmp_path / "go").touch()
    th.join(30)
    assert not th.is_alive()
    assert box["res"].status == "ok" and box["res"].metric == 2.0
    st = trainer.status()
    assert st["running"] is None and st["completed"] == 1
    assert marked_pids(mark) == []


def test_stop_kills_the_child_and_reports_infra(tmp_path):
    target, trainer, mark = toy(tmp_path, _blocking_train(tmp_path, ignore_term=True), grace=0.3)
    th, box = _run_in_thread(trainer, candidate(target))
    wait_for((tmp_path / "started").exists, what="the child to start")
    assert marked_pids(mark), "the marker scan cannot see the running child"
    trainer.stop()
    th.join(15)  # grace is 0.3 s: run() returns long before this unless stop() failed
    assert not th.is_alive(), "run() did not return after stop()"
    res = box["res"]
    assert res.status == "infra" and res.metric is None and "stopped" in res.error_tail
    assert marked_pids(mark) == []
    # the next run is not affected by the earlier stop
    (tmp_path / "go").touch()
    assert trainer.run(candidate(target)).status == "ok"


# -- 13. setup ------------------------------------------------------------------------------------

def _setup_target(tmp_path: Path, prepare_body: str):
    counter = tmp_path / "counter.txt"
    prepare = f"# {uuid.uuid4().hex}\nimport sys\nopen({str(counter)!r}, 'a').write('ran\\n')\n{prepare_body}"
    toml = '[target]\nsetup = "{python} prepare.py"\n'
    return make_target(tmp_path / "target", OK_TRAIN, prepare=prepare, toml=toml), counter


def test_setup_runs_once_per_node(tmp_path):
    target, counter = _setup_target(tmp_path, "print('prepared')\n")
    trainers = [Trainer(target, str(tmp_path / f"work{i}"), name=f"t{i}", box=UNCONFINED) for i in range(2)]
    threads = [threading.Thread(target=t.setup) for t in trainers]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert counter.read_text() == "ran\n"
    res = trainers[1].run(candidate(target))  # run() calls setup() again: still once
    assert res.status == "ok" and counter.read_text() == "ran\n"


def test_setup_runs_again_when_what_it_built_is_gone(tmp_path):
    """The marker outlived a deleted data cache: setup was skipped and the first run crashed on missing data."""
    data = tmp_path / "cache"
    prepare = (f"import os\nos.makedirs({str(data)!r}, exist_ok=True)\n"
               f"open(os.path.join({str(data)!r}, 'tokens.bin'), 'w').write('x')\n")
    counter = tmp_path / "counter.txt"
    prepare = f"# {uuid.uuid4().hex}\nopen({str(counter)!r}, 'a').write('ran\\n')\n{prepare}"
    toml = f'[target]\nsetup = "{{python}} prepare.py"\ndata = [{str(data)!r}]\n'
    target = make_target(tmp_path / "target", OK_TRAIN, prepare=prepare, toml=toml)
    Trainer(target, str(tmp_path / "w1"), box=UNCONFINED).setup()
    Trainer(target, str(tmp_path / "w2"), box=UNCONFINED).setup()  # built and unchanged: not again
    assert counter.read_text() == "ran\n"
    shutil.rmtree(data)
    Trainer(target, str(tmp_path / "w3"), box=UNCONFINED).setup()
    assert counter.read_text() == "ran\nran\n" and (data / "tokens.bin").exists()


def test_setup_runs_again_when_the_data_goes_elsewhere(tmp_path, monkeypatch):
    """Built into the default place, then the cache variable set to an empty folder: the files found are the
    same (the empty folder adds none), but that is not where the runs will look; setup runs again."""
    default, moved = tmp_path / "default", tmp_path / "moved"
    counter = tmp_path / "counter.txt"
    prepare = (f"# {uuid.uuid4().hex}\nimport os\nopen({str(counter)!r}, 'a').write('ran\\n')\n"
               f"d = os.environ.get('AR_TOY_CACHE') or {str(default)!r}\nos.makedirs(d, exist_ok=True)\n"
               "open(os.path.join(d, 'tokens.bin'), 'w').write('x')\n")
    toml = f'[target]\nsetup = "{{python}} prepare.py"\ndata = ["$AR_TOY_CACHE", {str(default)!r}]\n'
    target = make_target(tmp_path / "target", OK_TRAIN, prepare=prepare, toml=toml)
    monkeypatch.delenv("AR_TOY_CACHE", raising=False)
    Trainer(target, str(tmp_path / "w1"), box=UNCONFINED).setup()
    moved.mkdir()
    monkeypatch.setenv("AR_TOY_CACHE", str(moved))
    Trainer(target, str(tmp_path / "w2"), box=UNCONFINED).setup()
    assert counter.read_text() == "ran\nran\n" and (moved / "tokens.bin").exists()


def test_failing_setup_raises_with_the_log_tail(tmp_path):
    target, counter = _setup_target(tmp_path, "print('no data at /nowhere-5c1d')\nsys.exit(3)\n")
    trainer = Trainer(target, str(tmp_path / "work"), box=UNCONFINED)
    with pytest.raises(SetupError) as err:
        trainer.setup()
    assert "no data at /nowhere-5c1d" in str(err.value) and "exit 3" in str(err.value)
    with pytest.raises(SetupError):  # not marked done: a run retries it and fails the same way
        trainer.run(candidate(target))
    assert counter.read_text() == "ran\nran\n"


# -- 14. as a Ray actor ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init("local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_actor_run_status_and_actor_kill(tmp_path, ray_local):
    ray = ray_local
    from trainers.actor import TrainerActor

    mark = new_mark()
    target = make_target(tmp_path / "target", OK_TRAIN, env={"AR_TEST_MARK": mark})
    actor = ray.remote(TrainerActor).options(max_concurrency=2, max_restarts=-1, max_task_retries=0) \
        .remote(target, str(tmp_path / "work"), "t-ray", grace_seconds=0.5, box=UNCONFINED)

    res = ray.get(actor.run.remote(candidate(target)), timeout=60)
    assert res.status == "ok" and res.metric == 1.25 and res.trainer == "t-ray" and res.gpu_model == "cpu"

    # status() answers while run() is in flight
    ref = actor.run.remote(candidate(target, train=_blocking_train(tmp_path, ignore_term=False), eid="exp-ray"))
    wait_for((tmp_path / "started").exists, 30, "the child to start")
    st = ray.get(actor.status.remote(), timeout=10)
    assert st["running"]["experiment_id"] == "exp-ray" and st["running"]["elapsed"] >= 0
    (tmp_path / "go").touch()
    assert ray.get(ref, timeout=30).status == "ok"

    # kill -9 the actor process while a TERM-ignoring child (with a TERM-ignoring grandchild) runs
    child_pid, gc_pid = tmp_path / "child.pid", tmp_path / "gc.pid"
    train = SLEEPER_FN + f"""
signal.signal(signal.SIGTERM, signal.SIG_IGN)
sleeper({str(gc_pid)!r})
wait_file({str(gc_pid)!r})
open({str(child_pid)!r} + ".tmp", "w").write(str(os.getpid()))
os.rename({str(child_pid)!r} + ".tmp", {str(child_pid)!r})
while True:
    time.sleep(3600)
"""
    ref = actor.run.remote(candidate(target, train=train))
    wait_for(child_pid.exists, 30, "the child to start")
    child = int(child_pid.read_text())
    reaper = ppid_of(child)  # unconfined: the inner reaper (out of Ray's reach), under the trainer's own reaper
    outer = ppid_of(reaper)
    actor_pid = ppid_of(outer)
    assert b"reaper.py" in Path(f"/proc/{reaper}/cmdline").read_bytes()
    assert b"reaper.py" in Path(f"/proc/{outer}/cmdline").read_bytes()
    assert actor_pid != os.getpid() and mark.encode() not in Path(f"/proc/{actor_pid}/environ").read_bytes()
    victims = marked_pids(mark)
    assert {child, reaper, int(gc_pid.read_text())} <= set(victims)

    os.kill(actor_pid, signal.SIGKILL)
    wait_for(lambda: marked_pids(mark) == [], 15, f"the run's processes {victims} to go after the actor died")
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(ref, timeout=30)
    def pong():  # restarted (max_restarts=-1); while it restarts, calls fail with ActorUnavailableError
        try:
            return ray.get(actor.ping.remote(), timeout=60)
        except ray.exceptions.ActorUnavailableError:
            return None
    assert wait_for(pong, 60, "the actor to restart") == "t-ray"


def test_a_cpu_trainer_runs_with_the_targets_cpu_budget(tmp_path):
    """The GPT target declares 300 s for GPUs and 20 s for CPUs: each trainer applies the one for its device
    and reports it, so the ledger records what really ran."""
    train = "import os\nprint('budget', os.environ['AR_BUDGET_SECONDS'], os.environ['AR_TIMEOUT_SECONDS'])\nprint('val_bpb: 1')\n"
    target, trainer, _ = toy(tmp_path, train, budget_seconds=300.0, cpu_budget_seconds=7.0)
    assert trainer.gpu_ids == [] and target.budget_for(1) == 300.0 and target.budget_for(0) == 7.0
    res = trainer.run(candidate(target))
    assert res.status == "ok" and res.budget_seconds == 7.0
    assert "budget 7.0 74" in Path(res.log_path).read_text()  # and the wall rule's timeout: 2 x 7 + 60
    res = trainer.run(candidate(target, budget_seconds=3.0))  # a ladder rung's own budget wins
    assert res.budget_seconds == 3.0 and "budget 3.0 66" in Path(res.log_path).read_text()


# -- stalls, not slowness: the hard timeout of a run that reports progress (ar_ray/timeouts.py) -----------------

PROGRESS = r"loss (?P<loss>\S+) \| (?P<percent>[\d.]+)% done"


def test_a_slow_run_that_keeps_progressing_is_not_killed_past_its_learned_limit(tmp_path, monkeypatch):
    """A token-budgeted run under a tight learned limit (2 s) takes ~4.5 s, a progress line every 0.8 s: it is
    slow (a loaded machine), not stuck, so it runs to its metric."""
    monkeypatch.setattr("ar_ray.timeouts.STALL_MIN", 1.5)
    train = """
        import time
        for i in range(1, 6):
            time.sleep(0.8)
            print(f"step {i} | loss {3 - 0.1 * i:.2f} | {20 * i}% done", flush=True)
        time.sleep(0.3)
        print("val_bpb: 1.5")
        """
    target, trainer, mark = toy(tmp_path, train, budget_tokens=1000, progress_pattern=PROGRESS)
    res = trainer.run(candidate(target, timeout_seconds=2.0))
    assert marked_pids(mark) == []
    assert res.status == "ok", res.error_tail
    assert res.child_seconds > 4.0 and res.metric == 1.5
    assert len(res.curve) == 5


def test_a_run_that_stops_progressing_is_killed_with_the_reason_well_before_the_ceiling(tmp_path, monkeypatch):
    """Three progress lines, then nothing: killed after the stall limit (max(1.5 s, 5 x 0.3 s)), not at the learned
    30 s limit, and the error says why and where."""
    monkeypatch.setattr("ar_ray.timeouts.STALL_MIN", 1.5)
    train = """
        import time
        for i in range(1, 4):
            time.sleep(0.3)
            print(f"step {i} | loss 2.5 | {14 * i}% done", flush=True)
        time.sleep(3600)
        """
    target, trainer, mark = toy(tmp_path, train, budget_tokens=1000, progress_pattern=PROGRESS)
    res = trainer.run(candidate(target, timeout_seconds=30.0))
    assert marked_pids(mark) == []
    assert res.status == "timeout" and res.metric is None
    assert res.error_tail.startswith("no progress for 2 s at 42 % done"), res.error_tail
    assert res.child_seconds < 10, res.child_seconds


def test_a_silent_target_still_dies_at_its_hard_timeout_and_output_extends_a_learned_one(tmp_path, monkeypatch):
    """Without a progress pattern: any new output is progress past a learned limit; a run that prints nothing has
    only the limit."""
    monkeypatch.setattr("ar_ray.timeouts.STALL_MIN", 1.5)
    chatty = """
        import time
        for i in range(8):
            time.sleep(0.4)
            print("working", flush=True)
        print("val_bpb: 2.0")
        """
    target, trainer, mark = toy(tmp_path / "a", chatty, budget_tokens=1000)
    res = trainer.run(candidate(target, timeout_seconds=1.5))
    assert res.status == "ok" and res.child_seconds > 3.0, res.error_tail
    target, trainer, mark = toy(tmp_path / "b", "import time\ntime.sleep(3600)\n", budget_tokens=1000)
    res = trainer.run(candidate(target, timeout_seconds=1.5))
    assert res.status == "timeout" and "hard timeout of 2 s" in res.error_tail and res.child_seconds < 8
    assert marked_pids(mark) == []


# -- where a run's time went: startup, train, eval, teardown --------------------------------------------------

def test_time_breakdown_from_progress_lines_and_the_reapers_clock(tmp_path):
    train = """
        import time
        time.sleep(1.0)                      # start-up: imports, data, model
        for i in range(1, 5):
            print(f"step {i} | loss 2.0 | {25 * i}% done", flush=True)
            if i < 4:
                time.sleep(0.5)              # training: 1.5 s from the first line to 100 %
        time.sleep(0.8)                      # evaluation
        print("val_bpb: 1.25", flush=True)
        time.sleep(0.6)                      # teardown
        """
    target, trainer, mark = toy(tmp_path, train, progress_pattern=PROGRESS)
    res = trainer.run(candidate(target))
    assert res.status == "ok", res.error_tail
    p = res.phases
    assert p["startup"] == pytest.approx(1.0, abs=0.35)
    assert p["train"] == pytest.approx(1.5, abs=0.3)
    assert p["eval"] == pytest.approx(0.8, abs=0.3)
    assert p["teardown"] == pytest.approx(0.6, abs=0.3)
    assert sum(p.values()) == pytest.approx(res.child_seconds, abs=0.3)
    # and the ledger row carries them as columns
    from ar_ray.engine.rows import result_row
    from ar_ray.ledger.store import Ledger, load
    from ar_ray.types import Proposal
    row = result_row("run", None, Proposal(proposer="p", base_version=0, description="d", files={}), candidate(target),
                     res, "baseline", 0, 1.25, 0.0, None)
    Ledger(tmp_path / "run").append(row)
    got = load(tmp_path / "run").iloc[0]
    assert [got[f"{k}_seconds"] for k in ("startup", "train", "eval", "teardown")] == \
        [p["startup"], p["train"], p["eval"], p["teardown"]]


def test_time_breakdown_of_a_target_without_progress_lines_is_all_training(tmp_path):
    train = """
        import time
        time.sleep(1.0)
        print("val_bpb: 1.25", flush=True)
        time.sleep(0.5)
        """
    res = run_toy(tmp_path, train)
    assert res.status == "ok", res.error_tail
    p = res.phases
    assert p["startup"] is None and p["eval"] is None
    assert p["train"] == pytest.approx(1.0, abs=0.35) and p["teardown"] == pytest.approx(0.5, abs=0.3)
