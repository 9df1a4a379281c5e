"""Hostile candidates: each is contained, recorded with a clear status, and leaves the ledger and other runs alone.

Every candidate here is what an LLM might write: it reads secrets, writes where it
should not, opens connections, forks without end, fills the disk, forges the metric
or refuses to die. Most run under bubblewrap (`.ci/run` installs it); the limits and
watchdogs that do not need it are also tested with `--sandbox none`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import uuid
from pathlib import Path

import pytest

from helpers_targets import candidate, make_target, marked_pids, new_mark
from trainers import sandbox
from trainers.sandbox import Sandbox
from trainers.trainer import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "trainers"))

pytestmark = pytest.mark.timeout(120)

SECRET = f"sk-must-not-leak-{uuid.uuid4().hex}"
HONEST_END = "\nprint('---')\nprint('val_bpb: 1.5')\n"


@pytest.fixture(scope="module")
def bwrap():
    problem = sandbox.bwrap_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the sandbox tests under bubblewrap: {problem}")
        pytest.skip(problem)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A home folder with credentials in the usual places (the trainer's own, as on a real node)."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(SECRET)
    (home / ".aws").mkdir()
    (home / ".aws" / "credentials").write_text(f"aws_secret_access_key = {SECRET}\n")
    (home / ".netrc").write_text(f"machine example.com password {SECRET}\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("RAY_AUTH_TOKEN", SECRET)
    return home


class Run:
    """A run dir laid out as `ar-ray run` lays it out: RUN/ledger, RUN/experiments/<id>, with a neighbour."""

    def __init__(self, tmp_path: Path, train: str, mode: str = "bwrap", end: str = "", **limits):
        self.mark = new_mark()
        self.data = tmp_path / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        (self.data / "train.bin").write_bytes(b"\x01" * 4096)
        self.root = tmp_path / "run"
        (self.root / "ledger").mkdir(parents=True, exist_ok=True)
        (self.root / "ledger" / "part-000000000000-000000000009-L0.parquet").write_bytes(b"PAR1 rows PAR1")
        self.neighbour = self.root / "experiments" / "exp-neighbour"
        self.neighbour.mkdir(parents=True, exist_ok=True)
        (self.neighbour / "log.txt").write_text("val_bpb: 1.0\n")
        self.before = self.snapshot()
        env = {"AR_TEST_MARK": self.mark}
        self.target = make_target(tmp_path / "target", "print('val_bpb: 1.5')\n", env=env, data=(str(self.data),),
                                  network=limits.pop("network", None), result_file=limits.pop("result_file", None),
                                  timeout_seconds=limits.pop("timeout", None),
                                  env_passthrough=limits.pop("env_passthrough", None))
        self.trainer = Trainer(self.target, str(self.root / "experiments"), name="t-box", grace_seconds=0.5,
                               box=Sandbox(mode=mode, **limits))
        self.trainer.sandbox_note()
        self.result = self.trainer.run(candidate(self.target, train=textwrap.dedent(train) + end, eid="exp-hostile"))
        self.log = Path(self.result.log_path).read_text(errors="replace")

    def snapshot(self) -> dict[str, bytes]:
        files = [p for p in [*self.root.rglob("*"), *self.data.rglob("*")] if p.is_file()]
        return {str(p): p.read_bytes() for p in files if "exp-hostile" not in p.parts}

    def assert_contained(self):
        assert self.snapshot() == self.before, "the ledger, another run or the data changed"
        assert marked_pids(self.mark) == [], "a process of the run outlived it"


def test_auto_resolves_to_bwrap_here_and_none_is_said_plainly(bwrap):
    assert sandbox.resolve("auto")[0] == "bwrap"
    mode, note = sandbox.resolve("none")
    assert mode == "none" and "stripped environment" in note
    with pytest.raises(sandbox.SandboxError, match="--sandbox must be one of"):
        Sandbox(mode="docker")


def test_a_missing_bwrap_is_a_clear_error_or_a_said_fallback(monkeypatch):
    sandbox.bwrap_problem.cache_clear()
    monkeypatch.setenv("PATH", "/nonexistent")
    try:
        with pytest.raises(sandbox.SandboxError, match="apt-get install bubblewrap"):
            sandbox.resolve("bwrap")
        mode, note = sandbox.resolve("auto")
        assert mode == "none" and "bubblewrap is not installed" in note and "network" in note
    finally:
        sandbox.bwrap_problem.cache_clear()


def test_secrets_are_out_of_reach(bwrap, home, tmp_path):
    # a process holding the key in its environment, as a Ray worker on the node does
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                              env={**os.environ, "OPENAI_API_KEY": SECRET})
    try:
        run = Run(tmp_path, f"""
            import glob, os
            found = [v for k, v in os.environ.items() if {SECRET!r} in v]
            for path in glob.glob("/proc/[0-9]*/environ"):
                try:
                    found += [path] if {SECRET!r}.encode() in open(path, "rb").read() else []
                except OSError:
                    pass
            for path in ["~/.ray/auth_token", "~/.aws/credentials", "~/.netrc"]:
                try:
                    found.append(open(os.path.expanduser(path)).read())
                except OSError:
                    pass
            print("found:", found)
            """, end=HONEST_END)
    finally:
        holder.kill()
        holder.wait()
    assert run.result.status == "ok" and "found: []" in run.log
    run.assert_contained()
    leaked = [p for p in run.root.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == [] and SECRET not in repr(run.result)


CREDENTIAL_NAMES = ("DB_AUTH", "MYSQL_PWD", "DB_PASS", "DATABASE_URL", "BASIC_AUTH", "HTTP_AUTHORIZATION", "PASSPHRASE",
                    "GH_PAT", "SENTRY_DSN")


@pytest.mark.parametrize("mode", ["bwrap", "none"])
def test_the_environment_is_an_allowlist(mode, request, tmp_path, monkeypatch):
    """Credentials under names no denylist guessed never reach a candidate; neither does any other name outside the
    allowlist, unless the target passes it through by name. The start note names the dropped credentials, never
    their values."""
    if mode == "bwrap":
        request.getfixturevalue("bwrap")
    for name in CREDENTIAL_NAMES:
        monkeypatch.setenv(name, f"{name}-{SECRET}")
    monkeypatch.setenv("SOME_OTHER_SETTING", "not-allowlisted")
    monkeypatch.setenv("MY_PASSED_SETTING", "passed-through")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = Run(tmp_path, f"""
        import json, os
        print("leaked:", sorted(k for k, v in os.environ.items() if {SECRET!r} in v))
        print("env:", json.dumps(dict(os.environ)))
        """, mode=mode, end=HONEST_END, env_passthrough=["MY_PASSED_SETTING"])
    assert run.result.status == "ok", run.result.error_tail
    assert "leaked: []" in run.log and SECRET not in run.log
    env = json.loads(next(line[5:] for line in run.log.splitlines() if line.startswith("env: ")))
    assert env["MY_PASSED_SETTING"] == "passed-through" and "SOME_OTHER_SETTING" not in env
    assert env["OMP_NUM_THREADS"] == "1" and env["PATH"] and env["AR_TEST_MARK"] == run.mark
    note = run.trainer.sandbox_note()["note"]
    assert "kept from candidates" in note and all(name in note for name in CREDENTIAL_NAMES)
    assert SECRET not in note and "MY_PASSED_SETTING" not in note
    run.assert_contained()


@pytest.mark.parametrize("value,problem", [
    ("HF_HOME", "must be a list of environment variable names"), (["FOO=bar"], "must be a list"), ([1], "must be a list"),
])
def test_env_passthrough_is_checked(tmp_path, value, problem):
    from ar_ray.target import TargetError
    with pytest.raises(TargetError, match=problem) as e:
        make_target(tmp_path / "target", "print('val_bpb: 1.5')\n", env_passthrough=value)
    assert "env_passthrough = [" in str(e.value)  # what to write instead
    assert make_target(tmp_path / "ok", "print(1)\n", env_passthrough=["WANDB_MODE"]).env_passthrough == ("WANDB_MODE",)


def test_writes_to_the_ledger_other_runs_prepare_and_data_fail(bwrap, tmp_path):
    run = Run(tmp_path, f"""
        import os, pathlib
        here = pathlib.Path.cwd()
        outcomes = []
        for path in [here.parent.parent / "ledger" / "part-000000000000-000000000009-L0.parquet",
                     here.parent / "exp-neighbour" / "log.txt", here / "prepare.py", {str(tmp_path / "data" / "train.bin")!r}]:
            try:
                with open(path, "wb") as f:
                    f.write(b"owned")
                outcomes.append("wrote")
            except OSError as e:
                outcomes.append(type(e).__name__)
        print("outcomes:", outcomes)
        raise SystemExit("could not take over" if "wrote" not in outcomes else 0)
        """)
    assert run.result.status == "crash" and "could not take over" in run.result.error_tail
    assert "wrote" not in run.log
    run.assert_contained()
    assert (run.root / "experiments" / "exp-hostile" / "log.txt").exists()  # its own log is kept


def test_unconfined_writes_to_the_data_or_prepare_are_caught_after_the_run(tmp_path):
    run = Run(tmp_path, f"open({str(tmp_path / 'data' / 'train.bin')!r}, 'ab').write(b'x'){HONEST_END}", mode="none")
    assert run.result.status == "tampered" and "changed the target's data" in run.result.error_tail
    run = Run(tmp_path / "again", f"open('prepare.py', 'w').write('VOCAB = 1'){HONEST_END}", mode="none")
    assert run.result.status == "tampered" and "prepare.py" in run.result.error_tail


class Listener:
    """A TCP server on this machine's loopback that counts connections."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


NETWORK = """
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=5).close()
    print("connected")
except OSError as e:
    print("refused:", type(e).__name__)
""" + HONEST_END


def test_no_network_unless_the_target_opts_in(bwrap, tmp_path):
    server = Listener()
    try:
        run = Run(tmp_path, NETWORK.format(port=server.port))
        assert run.result.status == "ok" and "refused:" in run.log and server.accepted == 0
        run.assert_contained()
        opted_in = Run(tmp_path / "opt-in", NETWORK.format(port=server.port), network=True)
        assert "connected" in opted_in.log and server.accepted == 1
    finally:
        server.sock.close()


FORK_FOREVER = """
import os, time
while True:
    if os.fork() == 0:
        time.sleep(600)
        os._exit(0)
"""


@pytest.mark.parametrize("mode", ["bwrap", "none"])
def test_fork_without_end_hits_the_process_limit(mode, request, tmp_path):
    if mode == "bwrap":
        request.getfixturevalue("bwrap")
    run = Run(tmp_path, FORK_FOREVER, mode=mode, max_processes=40)
    assert run.result.status == "limit" and "process limit" in run.result.error_tail
    run.assert_contained()


def test_an_ever_growing_file_hits_the_file_size_limit(bwrap, tmp_path):
    run = Run(tmp_path, "f = open('grow.bin', 'wb')\nwhile True:\n    f.write(b'x' * 2**20)\n", max_file_gb=8 / 1024)
    assert run.result.status == "limit" and "file size limit" in run.result.error_tail
    run.assert_contained()


@pytest.mark.parametrize("mode", ["bwrap", "none"])
def test_many_files_hit_the_disk_quota(mode, request, tmp_path):
    if mode == "bwrap":
        request.getfixturevalue("bwrap")
    train = "import itertools, time\nfor i in itertools.count():\n    open(f'f{i}.bin', 'wb').write(b'x' * 2**20)\n" \
            "    time.sleep(0.005)\n"
    run = Run(tmp_path, train, mode=mode, disk_quota_gb=24 / 1024)
    assert run.result.status == "limit" and "disk quota" in run.result.error_tail
    run.assert_contained()


MANY_FILES = "import itertools, time\nfor i in itertools.count():\n    open(f'f{i}.bin', 'wb').write(b'x' * 2**20)\n" \
             "    time.sleep(0.005)\n"


@pytest.mark.parametrize("mode", ["bwrap", "none"])
@pytest.mark.parametrize("limit", ["disk quota", "process limit"])
def test_a_watchdog_kill_ends_the_reaper_cleanly(limit, mode, request, tmp_path):
    """The watchdog's kill reaps the training child itself; the reaper must still end with the child's status
    (killed: 128 + the signal), not a ChildProcessError traceback, and still make its final sweep of the tree."""
    if mode == "bwrap":
        request.getfixturevalue("bwrap")
    if limit == "disk quota":
        run = Run(tmp_path, MANY_FILES, mode=mode, disk_quota_gb=24 / 1024)
    else:  # a cgroup cap far above the watchdog's, so the watchdog (not the kernel) stops it
        run = Run(tmp_path, FORK_FOREVER, mode=mode, max_processes=40, max_tasks=100_000)
    assert run.result.status == "limit" and limit in run.result.error_tail, run.result.error_tail
    assert "Traceback" not in run.log and "ChildProcessError" not in run.log, run.log[-2000:]
    assert run.result.returncode in (128 + signal.SIGTERM, 128 + signal.SIGKILL)  # (a crashed reaper: 1)
    run.assert_contained()


def test_memory_on_a_cpu_run_is_limited(bwrap, tmp_path):
    run = Run(tmp_path, "blocks = [bytearray(2**26) for _ in range(64)]\n" + HONEST_END, max_memory_gb=0.5)
    assert run.result.status == "oom" and "MemoryError" in run.result.error_tail
    run.assert_contained()


def test_a_fake_metric_line_is_caught(bwrap, tmp_path):
    train = "import json, os\njson.dump({'val_bpb': 1.5}, open(os.environ['AR_RESULT_FILE'], 'w'))\n" \
            "print('val_bpb: 0.0001')\n"
    run = Run(tmp_path, train, result_file=True)
    assert run.result.status == "metric_mismatch" and run.result.metric is None
    # the faked number stays out of the ledger's metric columns (min(val_bpb) must not find it), kept in `extra`
    from ar_ray.engine.rows import result_row
    from ar_ray.types import Proposal
    row = result_row("run", None, Proposal(proposer="p", base_version=0, description="d", files={}), candidate(run.target),
                     run.result, "discard", 0, None, 0.0, None)
    assert row["val_bpb"] is None and row["metric"] is None and row["extra"]["printed_val_bpb"] == "0.0001"
    run.assert_contained()


@pytest.mark.timeout(60)
def test_a_result_file_made_a_fifo_is_reported_not_waited_on(bwrap, tmp_path):
    # a FIFO where the trainer reads the result after the run: reading it would block the trainer for ever
    train = "import os\nos.mkfifo(os.environ['AR_RESULT_FILE'])\nprint('val_bpb: 1.5')\n"
    run = Run(tmp_path, train, result_file=True)
    assert run.result.status == "tampered" and run.result.metric is None
    assert run.result.error_tail == "the result file is not a regular file: it is a FIFO"
    assert not os.path.lexists(Path(run.result.log_path).parent / "result.json")  # (reports read it again)
    run.assert_contained()


def test_a_sleeper_ignoring_sigterm_is_killed_at_the_timeout(bwrap, tmp_path):
    train = """
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if os.fork() == 0:
            os.setsid()
            time.sleep(3600)
        time.sleep(3600)
        """
    target_dir = tmp_path / "t"
    mark = new_mark()
    target = make_target(target_dir, "print('val_bpb: 1')\n", env={"AR_TEST_MARK": mark}, timeout_seconds=2)
    trainer = Trainer(target, str(tmp_path / "run" / "experiments"), grace_seconds=0.5, box=Sandbox(mode="bwrap"))
    result = trainer.run(candidate(target, train=train))
    assert result.status == "timeout" and "hard timeout" in result.error_tail
    assert marked_pids(mark) == []


def test_a_candidate_cannot_reach_its_trainer_to_kill_it(bwrap, tmp_path):
    """Unconfined, this candidate SIGKILLs its reaper's parent: the trainer (here, this very test process).
    In its own PID namespace it sees neither."""
    killer = """
        import os, signal
        reaper = os.getppid()
        with open(f"/proc/{reaper}/stat") as f:
            trainer = int(f.read().rsplit(")", 1)[1].split()[1])
        print("trainer pid seen as", trainer, "reaper as", reaper, flush=True)
        if trainer > 1:
            os.kill(trainer, signal.SIGKILL)
        raise SystemExit("no trainer in sight")
        """
    run = Run(tmp_path, killer)
    assert run.result.status == "crash" and "no trainer in sight" in run.result.error_tail
    assert f"trainer pid seen as {os.getpid()}" not in run.log
    run.assert_contained()


def test_caches_that_default_to_home_are_writable_inside_the_sandbox(bwrap, home, tmp_path):
    """Triton writes its kernel cache under ~/.triton, which the sandbox keeps read-only (or, for a home under
    /tmp as here, private to the run): the caches are pointed at the run's own /tmp, and nothing reaches home."""
    run = Run(tmp_path, """
        import os, pathlib
        for var in ("TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "MPLCONFIGDIR"):
            assert os.environ[var].startswith("/tmp/"), var
            d = pathlib.Path(os.environ[var])
            d.mkdir(parents=True, exist_ok=True)
            (d / "entry").write_text("cached")
        try:
            (pathlib.Path.home() / ".triton").mkdir()
        except OSError:
            pass
        """, end=HONEST_END)
    assert run.result.status == "ok"
    assert not (home / ".triton").exists()
    run.assert_contained()


def test_what_is_bound_back_under_the_private_tmp():
    root = Path(tempfile.mkdtemp(prefix="ark-"))  # under /tmp, like a CI checkout
    try:
        for d in ("venv/lib/site", "runs/r1/ledger", "runs/r1/experiments/e1"):
            (root / d).mkdir(parents=True)
        hidden = [root / "runs" / "r1", root / "runs" / "r1" / "experiments"]
        paths = [root / "venv", root / "venv" / "lib" / "site", "/tmp", root / "runs", root / "runs" / "r1" / "ledger",
                 "/usr/lib", "relative", root / "missing"]
        # the venv, once; never /tmp itself, a parent of the run or a hidden folder, or what a hidden folder holds;
        # /usr is not under /tmp (the read-only root already shows it)
        assert sandbox.kept([str(p) for p in paths], hidden, root / "runs/r1/experiments/e1") == [root / "venv"]
    finally:
        shutil.rmtree(root)


def test_a_python_installed_under_tmp_still_runs_in_the_sandbox(bwrap, tmp_path):
    """CI's checkout (and its venv) may live under /tmp, which the sandbox replaces with an empty private one."""
    venv = Path(tempfile.mkdtemp(prefix="arv-"))
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
        site = next((venv / "lib").glob("python3*/site-packages"))
        (site / "outer.pth").write_text("\n".join(p for p in sys.path if p.endswith("site-packages")) + "\n")
        script = f"""
import sys
sys.path[:0] = {[str(Path(__file__).parents[1]), str(Path(__file__).parents[2])]!r}
from helpers_targets import candidate, make_target
from trainers.sandbox import Sandbox
from trainers.trainer import Trainer
target = make_target(__import__("pathlib").Path({str(tmp_path / "t")!r}), "import sys\\nprint('val_bpb: 1.0', sys.prefix)\\n")
t = Trainer(target, {str(tmp_path / "run" / "experiments")!r}, box=Sandbox(mode="bwrap"))
t.sandbox_note()
r = t.run(candidate(target))
print(r.status, r.error_tail)
"""
        out = subprocess.run([str(venv / "bin" / "python"), "-c", script], capture_output=True, text=True, timeout=120)
        assert out.stdout.startswith("ok"), out.stdout + out.stderr
        assert str(venv) in (tmp_path / "run" / "experiments").joinpath(
            next(p.name for p in (tmp_path / "run" / "experiments").iterdir()), "log.txt").read_text()
    finally:
        shutil.rmtree(venv, ignore_errors=True)


def test_an_exponential_fork_bomb_is_stopped_by_the_kernel_where_a_pids_cgroup_can_be_made(tmp_path):
    """Unconfined, as root: RLIMIT_NPROC does not bind root, so only the run's own pids cgroup stops every process
    of the tree from forking. The watchdog is turned off here (max_processes is huge) to show the cgroup alone."""
    import reaper  # trainers/reaper.py, on sys.path below
    probe = reaper.make_pids_cgroup(64)
    if probe is None:
        pytest.skip("this machine does not let us make a pids cgroup (not root, or no delegated cgroup v2)")
    try:  # and a process can be put in it: otherwise the bomb below would run unbounded
        def enter():
            with open(os.path.join(probe, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        seen = subprocess.run(["cat", "/proc/self/cgroup"], preexec_fn=enter, capture_output=True, text=True).stdout
    finally:
        reaper._remove_cgroup(probe)
    if os.path.basename(probe) not in seen:
        pytest.skip("a pids cgroup can be made here but a process cannot be moved into it")
    bomb = """
        import os, sys
        refused = False
        while True:
            try:
                os.fork()
            except OSError:
                if not refused and os.getpid() == ORIGIN:
                    print("fork refused", flush=True)
                    refused = True
        """.replace("ORIGIN", "__import__('os').getpgrp()")
    run = Run(tmp_path, bomb, mode="none", max_processes=100_000, max_tasks=64, timeout=2)
    assert run.result.status == "limit" and "fork refused" in run.log
    assert "the kernel refused" in run.result.error_tail and "cap of 64 tasks" in run.result.error_tail
    run.assert_contained()
    assert not [d for root in reaper._pids_roots() if os.path.isdir(root)  # (other live runs may hold theirs)
                for d in os.listdir(root) if d.startswith(reaper.CGROUP_PREFIX) and reaper._owner_gone(d)], \
        "a run's cgroup was left behind"


def test_the_data_fingerprint_flags_changed_and_removed_files_not_new_ones(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    for name in ("a.bin", "sub/b.bin", "c.bin"):
        (data / name).write_bytes(b"x" * 10)
    env = {"DATA": str(data)}
    before = sandbox.fingerprint(("$DATA", "$UNSET/else"), env)
    assert len(before) == 3  # an entry whose variable is unset does not apply
    with open(data / "a.bin", "ab") as f:  # (a same-size rewrite is caught by ctime, at the clock's granularity)
        f.write(b"y")
    (data / "sub" / "b.bin").unlink()
    (data / "new-cache").mkdir()
    (data / "new-cache" / "meta.json").write_text("{}")  # another job's setup, say
    assert sandbox.changed(before, sandbox.fingerprint(("$DATA",), env)) == [str(data / "a.bin"), str(data / "sub" / "b.bin")]


def test_the_cgroup_of_a_killed_reaper_and_its_orphans_are_cleared_by_the_next_run():
    """A reaper SIGKILLed mid-run cannot clean up: the next run on the node kills what is left in its cgroup
    and removes it (found when a driver aborted at the very moment a run started)."""
    import reaper  # trainers/reaper.py, on sys.path below
    probe = reaper.make_pids_cgroup(64)
    if probe is None:
        pytest.skip("this machine does not let us make a pids cgroup (not root, or no delegated cgroup v2)")
    root = os.path.dirname(probe)
    reaper._remove_cgroup(probe)
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid names the cgroup: a reaper that no longer exists
    ns = os.stat("/proc/self/ns/pid").st_ino
    stale = os.path.join(root, f"{reaper.CGROUP_PREFIX}{ns}-{gone.pid}-1")
    os.mkdir(stale)
    # Left alone: a reaper of another pid namespace (its pids mean nothing here: found when a run under
    # `unshare --pid` and one outside it killed each other's runs), and an older version's name.
    foreign = [os.path.join(root, f"{reaper.CGROUP_PREFIX}{ns + 1}-{gone.pid}-1"),
               os.path.join(root, f"{reaper.CGROUP_PREFIX}{gone.pid}"), os.path.join(root, f"ar-ray-run-{gone.pid}")]
    for path in foreign:
        os.mkdir(path)
    # A pid reused by a younger process: its owner is gone all the same.
    reused = os.path.join(root, reaper.CGROUP_PREFIX + reaper._identity(os.getpid()).rsplit("-", 1)[0] + "-1")
    os.mkdir(reused)

    def enter():
        with open(os.path.join(stale, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    orphan = subprocess.Popen(["sleep", "300"], preexec_fn=enter)
    try:
        cleared = reaper.clear_stale_cgroups(root)
        assert stale in cleared and reused in cleared and not set(foreign) & set(cleared)
        assert orphan.wait(timeout=10) == -signal.SIGKILL and not os.path.exists(stale)
        assert all(os.path.isdir(path) for path in foreign)
        live = reaper.make_pids_cgroup(64)  # a live reaper's cgroup (this process) is left alone
        assert live not in reaper.clear_stale_cgroups(root) and os.path.isdir(live)
        reaper._remove_cgroup(live)
    finally:
        orphan.kill()
        for path in foreign + [reused]:
            reaper._remove_cgroup(path, tries=1)


CACHE_PROBE = """
import os, pathlib, sys
HOSTILE = False
cache = pathlib.Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
print("seen:", ",".join(sorted(p.name for p in cache.glob("*"))) if cache.is_dir() else "")
cache.mkdir(parents=True, exist_ok=True)
(cache / os.environ["AR_EXPERIMENT_ID"]).write_text("kernel")
shared = pathlib.Path(os.environ["SHARED_CACHE"])
try:  # a hostile candidate knows where the node's cache is
    if HOSTILE:
        (shared / "inductor" / "planted").write_text("evil")
        print("planted: yes")
except OSError as e:
    print("planted: no", type(e).__name__)
print("val_bpb: 1.0")
"""


@pytest.mark.parametrize("mode", ["none", "bwrap"])
def test_the_compile_cache_is_warm_for_candidates_and_written_only_by_the_target_as_shipped(tmp_path, monkeypatch,
                                                                                           request, mode):
    from trainers import compile_cache
    if mode == "bwrap":
        request.getfixturevalue("bwrap")
    monkeypatch.setenv("AR_COMPILE_CACHE", str(tmp_path / "node-cache"))
    target = make_target(tmp_path / "target", CACHE_PROBE, env_passthrough=["SHARED_CACHE"])  # (an allowlist)
    shared = compile_cache.node_dir(target)
    monkeypatch.setenv("SHARED_CACHE", str(shared))
    trainer = Trainer(target, str(tmp_path / "work"), name="t", box=Sandbox(mode=mode))

    def run(train=None, eid=None):
        res = trainer.run(candidate(target, train=train, eid=eid))
        assert res.status == "ok", res.error_tail
        log = Path(res.log_path).read_text()
        return log.split("seen: ")[1].splitlines()[0], "planted: yes" in log

    seen, _ = run(eid="base1")  # the target as shipped: it writes the node's cache
    assert seen == "" and (shared / "inductor" / "base1").exists()
    seen, planted = run(CACHE_PROBE.replace("HOSTILE = False", "HOSTILE = True"), eid="cand1")  # a candidate
    assert seen.split(",")[:1] == ["base1"]  # it started from a copy of the node's cache
    assert not (shared / "inductor" / "cand1").exists()  # its own kernels went with its run dir
    if mode == "bwrap":  # confined, it cannot write the node's cache even knowing where it is
        assert not planted and not (shared / "inductor" / "planted").exists()
    seen, _ = run(eid="base2")
    assert "cand1" not in seen.split(",")


@pytest.mark.parametrize("mode", ["bwrap", "none"])
def test_a_leftover_read_only_file_the_run_writes_is_named_with_the_fix(mode, request, tmp_path):
    """A checkpoint left in the target folder (out/ckpt.pt) is one of its read-only files: a run that writes it
    fails (bubblewrap: Read-only file system; unconfined: tampered), and the error says which file and what to do."""
    if mode == "bwrap":
        request.getfixturevalue("bwrap")
    root = tmp_path / "target"
    (root / "out").mkdir(parents=True)
    (root / "out" / "ckpt.pt").write_bytes(b"old checkpoint")
    train = "import os\nos.makedirs('out', exist_ok=True)\nopen('out/ckpt.pt', 'wb').write(b'new')\n" + HONEST_END
    target = make_target(root, train)
    assert "out/ckpt.pt" in target.readonly
    trainer = Trainer(target, str(tmp_path / "work"), name="t", grace_seconds=0.5, box=Sandbox(mode=mode))
    trainer.sandbox_note()
    res = trainer.run(candidate(target))
    assert res.status in (("crash",) if mode == "bwrap" else ("crash", "tampered"))  # (root may write a 0444 file)
    assert "out/ckpt.pt" in res.error_tail and "remove it from the target folder" in res.error_tail, res.error_tail
    assert "readonly = [" in res.error_tail


def test_a_reaper_whose_spawner_died_before_it_armed_the_death_signal_runs_nothing(tmp_path):
    """The spawner's pid comes with --parent: a trainer that died while its reaper was still starting (the reaper
    is then already an orphan, so its own parent pid says nothing) leaves no unsupervised run behind."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    reaper = str(Path(__file__).parents[2] / "trainers" / "reaper.py")
    ran = tmp_path / "ran"
    for parent, code, exists in ((gone.pid, 128 + signal.SIGTERM, False), (os.getpid(), 0, True)):
        r = subprocess.run([sys.executable, "-I", "-S", reaper, "--parent", str(parent), "--", "touch", str(ran)],
                           timeout=30)
        assert (r.returncode, ran.exists()) == (code, exists)


def test_a_second_reaper_whose_first_died_before_it_armed_runs_nothing(tmp_path):
    """Unconfined runs sit under two reapers (trainers/trainer.py): the first hands its pid to the second, which the
    trainer starts without --parent (it cannot know that pid). A second reaper whose first one died before it armed
    its death signal (Ray SIGKILLs a worker's direct children, the first reaper among them) runs nothing; the run
    itself never sees the handed pid."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    reaper = str(Path(__file__).parents[2] / "trainers" / "reaper.py")
    ran, env_file = tmp_path / "ran", tmp_path / "env"
    r = subprocess.run([sys.executable, "-I", "-S", reaper, "--", "touch", str(ran)], timeout=30,
                       env={**os.environ, "AR_REAPER_PARENT": str(gone.pid)})
    assert (r.returncode, ran.exists()) == (128 + signal.SIGTERM, False)
    # the live pair, as the trainer starts it: the second reaper runs the child, which sees no AR_REAPER_PARENT
    show = f"import os; open({str(env_file)!r}, 'w').write(repr(os.environ.get('AR_REAPER_PARENT')))"
    r_fd, w_fd = os.pipe()
    try:
        r = subprocess.run([sys.executable, "-I", "-S", reaper, "--verdict-fd", str(w_fd), "--share-verdict", "1", "--",
                            sys.executable, "-I", "-S", reaper, "--verdict-fd", str(w_fd), "--",
                            sys.executable, "-c", show], timeout=30, pass_fds=(w_fd,))
    finally:
        os.close(w_fd)
        verdicts = os.read(r_fd, 4096).decode()
        os.close(r_fd)
    assert r.returncode == 0 and env_file.read_text() == "None", (r.returncode, verdicts)
    assert verdicts.count('"exited": 0') == 2, verdicts
