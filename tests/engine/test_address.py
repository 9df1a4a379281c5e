"""`ar-ray run --address` against a Ray cluster started the way users start one: `ray start --head`, token auth on.

The driver is a separate process started from a folder outside the repository, so the workers can only run
ar-ray's code if the driver ships it (ar_ray/engine/shipping.py); a wrong token is a clear error, not a traceback.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from helpers_targets import pids_with_env, wait_for
from toys import make_toy

from ar_ray.ledger import store as ledger

pytestmark = pytest.mark.timeout(240)
RAY = str(Path(sys.executable).with_name("ray"))
AR_RAY = str(Path(sys.executable).with_name("ar-ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def head():
    """A head node of its own (own token, temp dir and port), stopped with its whole process group."""
    work = Path(tempfile.mkdtemp(prefix="arh-"))  # short: Ray's socket paths must stay under 108 bytes
    token = work / "token"
    token.write_text(uuid.uuid4().hex)
    mark = f"AR_TEST_HEAD={uuid.uuid4().hex}"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "AR_TEST_HEAD": mark[13:]}
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    proc = subprocess.Popen([RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=4", "--num-gpus=2",
                             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={work / 'ray'}",
                             # (its agent's default port may be held by another Ray here: Ray then retries for ~3 s)
                             f"--dashboard-agent-listen-port={_free_port()}"],
                            env=env, cwd=work, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _listening(port), 60, "the Ray head to listen")
        yield {"address": f"127.0.0.1:{port}", "env": env, "work": work}
    finally:
        # SIGKILL at once: nothing here checks a head's own shutdown (test_job_submit runs the README's `kill`), and
        # on SIGTERM `ray start --block` drains the node for up to RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S (30 s)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        for pid in pids_with_env(mark):  # Ray's daemons and agents take half a minute to follow on their own
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_for(lambda: not pids_with_env(mark), 60, "the head's processes to exit")
        shutil.rmtree(work, ignore_errors=True)


def _ar_ray(head, tmp_path, *args, env=None):
    """`ar-ray run --address` from a folder outside the repository (the code reaches workers by shipping)."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir(exist_ok=True)
    env = dict(env or head["env"])
    env.pop("PYTHONPATH", None)
    return subprocess.run([AR_RAY, "run", "--address", head["address"], *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


def test_a_run_on_a_started_cluster_with_token_auth(head, tmp_path):
    target = make_toy(tmp_path / "target", "[target]\nenv = { TOY_SLEEP = '0.1' }\n")
    out = _ar_ray(head, tmp_path, "--target", str(target), "--run-dir", str(tmp_path / "run"), "--trainers", "2",
                  "--max-experiments", "4", "--acceptance", "greedy")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    df = ledger.load(tmp_path / "run")
    ran = df[df.decision != "skip"]
    assert (ran.role == "screen").sum() == 4 and set(ran.status) == {"ok"}
    assert ran.trainer.nunique() == 2 and "sandbox:" in out.stdout


def test_a_wrong_token_is_a_clear_error(head, tmp_path):
    bad = tmp_path / "bad-token"
    bad.write_text("not-the-token")
    # Ray tries the GCS RAY_NUM_REDIS_GET_RETRIES times, a second apart (20 by default), before it gives up; a wrong
    # token fails each try alike, so two tries show the same error as twenty
    env = {**head["env"], "RAY_AUTH_TOKEN_PATH": str(bad), "RAY_NUM_REDIS_GET_RETRIES": "2"}
    out = _ar_ray(head, tmp_path, "--run-dir", str(tmp_path / "run"), env=env)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "Traceback" not in text, text[-3000:]
    assert "Error: cannot join the Ray cluster" in text and "InvalidAuthToken" in text and "RAY_AUTH_TOKEN" in text
