"""`ray job submit ... -- ar-ray run --address auto` exactly as the README's cluster section shows it.

A head of its own (token auth, the dashboard and its job API on free loopback ports, its own temp dir; never
another Ray on this machine), then the README's command with `--working-dir` pointing at a copy of the
repository: the job's runtime env already ships the code, so ar-ray must reuse it rather than set a
conflicting one of its own (Ray refuses to merge two working_dirs: "Failed to merge the Job's runtime env").
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
import time
import uuid
from pathlib import Path

import pytest
from helpers_targets import free_ports, pids_with_env, wait_for
from toys import make_toy

from ar_ray.ledger import store as ledger

pytestmark = pytest.mark.timeout(300)
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
REPO = Path(__file__).resolve().parents[2]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop_head(proc: subprocess.Popen, mark: str) -> None:
    """The head this test started, and only it: its process group, then whatever still carries its mark.

    SIGKILL at once: on SIGTERM `ray start --block` drains the node for up to RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S
    (30 s), and this head's own shutdown is nothing a test here checks (the README's `kill` of a head is tested
    below, on a head of its own)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)
    for pid in pids_with_env(mark):  # Ray's daemons, agents and the job's driver, if still there
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_for(lambda: not pids_with_env(mark), 60, "the head's processes to exit")


@pytest.fixture(scope="module")
def job_head():
    """A Ray head with the dashboard (the job API) on, token auth, every port it opens chosen free."""
    work = Path(tempfile.mkdtemp(prefix="arj-"))  # short: Ray's socket paths must stay under 108 bytes
    token = work / "token"
    token.write_text(uuid.uuid4().hex)
    mark = uuid.uuid4().hex
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "AR_TEST_HEAD": mark,
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # the job's entrypoint finds `ar-ray`
    for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "PYTHONPATH"):  # no test helpers: the job ships the code
        env.pop(k, None)
    gcs, dash, agent, agent_grpc, client, metrics, rt_env, node_mgr, obj_mgr = free_ports(9)
    proc = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={gcs}", "--num-cpus=4", "--disable-usage-stats",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--ray-client-server-port={client}", f"--metrics-export-port={metrics}",
         f"--runtime-env-agent-port={rt_env}", f"--node-manager-port={node_mgr}",
         f"--object-manager-port={obj_mgr}", f"--temp-dir={work / 'ray'}"],
        env=env, cwd=work, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _listening(dash), 90, "the Ray dashboard to listen")
        address = f"http://127.0.0.1:{dash}"
        # the job API answers only once the head's agent is up ("No available agent to submit job")
        client = wait_for(lambda: _job_api_ready(address, token), 90, "the job API to answer")
        yield {"address": address, "env": env, "work": work, "token": token, "client": client}
    finally:
        _stop_head(proc, mark)
        shutil.rmtree(work, ignore_errors=True)


def _job_api_ready(address: str, token: Path):
    """A client of the head's job API (this process's own, the token in its header) once the API lists the jobs;
    None while it does not answer. The test watches jobs with it: a `ray job` command per look starts a Python of
    its own, a second or two of a 2-core machine each; the README's commands (submit, stop) are run as written."""
    from ray.job_submission import JobSubmissionClient
    try:
        client = JobSubmissionClient(address, headers={"Authorization": f"Bearer {token.read_text().strip()}"})
        client.list_jobs()
        return client
    except Exception:
        time.sleep(0.2)
        return None


def _repo_copy(dest: Path) -> Path:
    """The repository as a user's checkout has it (git's tracked files and the working tree's edits)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split("\n")
    for f in filter(None, files):
        src = REPO / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    return dest


STOP_WAIT = '{"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "60"}}'  # as the README's command


def _submit(head, cwd: Path, *args: str) -> str:
    """The README's `ray job submit` (RAY_AUTH_MODE=token and the token in head["env"]), run in `cwd`."""
    job = f"arj-{uuid.uuid4().hex[:8]}"
    out = subprocess.run([RAY, "job", "submit", "--address", head["address"], "--submission-id", job, "--no-wait",
                          "--working-dir", ".", "--runtime-env-json", STOP_WAIT, "--", *args],
                         cwd=cwd, env=head["env"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return job


def _wait_job(head, job: str, timeout: float) -> str:
    """The job's final status (SUCCEEDED, FAILED, STOPPED), or TIMEOUT."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = head["client"].get_job_status(job).value
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(0.2)
    return "TIMEOUT"


def _logs(head, job: str) -> str:
    return head["client"].get_job_logs(job)


def test_job_submit_with_working_dir_as_the_readme_shows(job_head, tmp_path):
    checkout = _repo_copy(tmp_path / "checkout")
    target = make_toy(tmp_path / "target", "[target]\nenv = { TOY_SLEEP = '0.1' }\n")
    run_dir = tmp_path / "run"
    job = _submit(job_head, checkout, "ar-ray", "run", "--address", "auto", "--target", str(target),
                  "--max-experiments", "2", "--run-dir", str(run_dir), "--trainers", "2", "--acceptance", "greedy")
    status = _wait_job(job_head, job, 150)
    logs = _logs(job_head, job)
    assert status == "SUCCEEDED", logs[-4000:]
    df = ledger.load(run_dir)
    ran = df[df.decision != "skip"]
    assert (ran.role == "baseline").sum() >= 1 and set(ran[ran.role == "baseline"].status) == {"ok"}
    assert (ran.role == "screen").sum() == 2 and set(ran[ran.role == "screen"].status) == {"ok"}
    # the run dir is said as an absolute path, with the node it is on
    assert f"run dir: {socket.gethostname()}:{run_dir}" in logs, logs[-3000:]
    assert "Failed to merge" not in logs


def test_job_whose_working_dir_lacks_ar_ray_gets_the_code_merged_in(job_head, tmp_path):
    """`--working-dir` of the target folder only (ar-ray installed where the job's driver runs): ar-ray adds its
    py_modules to the job's runtime env instead of replacing or conflicting with it; the job's working_dir stays."""
    target = make_toy(tmp_path / "target", "[target]\nenv = { TOY_SLEEP = '0.1' }\n")
    run_dir = tmp_path / "run"
    job = _submit(job_head, target, "ar-ray", "run", "--address", "auto", "--target", ".", "--max-experiments", "2",
                  "--run-dir", str(run_dir), "--trainers", "2", "--acceptance", "greedy")
    status = _wait_job(job_head, job, 150)
    logs = _logs(job_head, job)
    assert status == "SUCCEEDED", logs[-4000:]
    ran = ledger.load(run_dir)
    ran = ran[ran.decision != "skip"]
    assert (ran.role == "screen").sum() == 2 and set(ran.status) == {"ok"}


def test_what_a_driver_ships_inside_and_outside_a_job(tmp_path, monkeypatch):
    """No Ray: the runtime env chosen from the job's (RAY_JOB_CONFIG_JSON_ENV_VAR, set by Ray's job manager)."""
    from ar_ray.engine import shipping

    outside, override, _ = shipping.driver_runtime_env(environ={})
    assert outside["py_modules"] == shipping.package_dirs() and outside["working_dir"] and not override
    # the job's working_dir is this checkout (the entrypoint runs in it): nothing to add
    monkeypatch.chdir(REPO)
    job = {shipping.JOB_CONFIG_ENV: json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip"}})}
    assert shipping.driver_runtime_env(environ=job)[:2] == (None, False)
    # a job without the code: ours merged into the job's own fields, which are kept
    monkeypatch.chdir(tmp_path)
    job = {shipping.JOB_CONFIG_ENV: json.dumps({"runtime_env": {
        "working_dir": "gcs://_ray_pkg_x.zip", "py_modules": ["gcs://_ray_pkg_y.zip"], "excludes": ["*.csv"],
        "env_vars": {"A": "1"}}})}
    env, override, _ = shipping.driver_runtime_env(environ=job)
    assert override and env["working_dir"] == "gcs://_ray_pkg_x.zip" and "env_vars" not in env  # Ray merges those
    assert env["py_modules"] == ["gcs://_ray_pkg_y.zip", *shipping.package_dirs()]
    assert "*.csv" in env["excludes"] and ".git" in env["excludes"]
    # a job with only env vars: ours adds fields it lacks, and Ray merges the two without an override
    job = {shipping.JOB_CONFIG_ENV: json.dumps({"runtime_env": {"env_vars": {"A": "1"}}})}
    env, override, _ = shipping.driver_runtime_env(environ=job)
    assert not override and env["py_modules"] == shipping.package_dirs() and env["working_dir"]
    from ray.runtime_env.runtime_env import _merge_runtime_env
    assert _merge_runtime_env({"env_vars": {"A": "1"}}, env)["env_vars"] == {"A": "1"}


def _processes_naming(text: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        out.append(int(entry))
            except OSError:
                pass
    return out


def test_ray_job_stop_leaves_a_consistent_ledger_and_no_process(job_head, tmp_path):
    """`ray job stop` as the README shows it: Ray SIGTERMs the entrypoint (ar-ray stops cleanly: runs killed, the
    unused proposals recorded, the status said) and SIGKILLs it RAY_JOB_STOP_WAIT_TIME_S later, which the README's
    submit command raises from Ray's 3 s so the clean stop has time."""
    from toys import marker_processes

    mark = f"toy-{uuid.uuid4().hex}"
    checkout = _repo_copy(tmp_path / "checkout")
    target = make_toy(tmp_path / "target", f"[target]\nenv = {{ TOY_SLEEP = '1', TOY_MARK = '{mark}' }}\n")
    run_dir = tmp_path / "run"
    job = _submit(job_head, checkout, "ar-ray", "run", "--address", "auto", "--target", str(target), "--run-dir",
                  str(run_dir), "--trainers", "2", "--max-experiments", "200")
    try:
        wait_for(lambda: (run_dir / "ledger").is_dir() and len(ledger.load(run_dir)) >= 2 and marker_processes(mark),
                 120, "two rows in the ledger and a run in flight")
        stop = subprocess.run([RAY, "job", "stop", "--address", job_head["address"], job], env=job_head["env"],
                              capture_output=True, text=True, timeout=120)
        assert stop.returncode == 0, stop.stdout[-3000:] + stop.stderr[-3000:]
        assert _wait_job(job_head, job, 90) == "STOPPED"
        wait_for(lambda: not marker_processes(mark) and not _processes_naming(str(run_dir)), 30,
                 "no run or driver of the job left")
    finally:
        for pid in marker_processes(mark) + _processes_naming(str(run_dir)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    logs = _logs(job_head, job)
    df = ledger.load(run_dir)
    assert df.experiment_id.is_unique and len(df) >= 2, logs[-3000:]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "interrupted", logs[-3000:]


def test_stopping_one_of_several_rays_as_the_readme_shows(job_head, tmp_path):
    """The README's "Several Rays on one machine" block, run as written (its ports and temp dir swapped for free
    ones): `kill` of the `ray start --block` PID stops that head's processes, and the other Ray (this module's
    head) still answers."""
    text = (REPO / "README.md").read_text()
    block = text[text.index("**Several Rays on one machine.**"):]
    block = block[block.index("```bash\n") + 8:]
    block = block[:block.index("```")]
    work = Path(tempfile.mkdtemp(prefix="arm-"))
    try:
        ports = dict(zip(("6390", "8266", "10101", "52366"), map(str, free_ports(4))))
        for fixed, free in ports.items():
            assert f"={fixed}" in block, block
            block = block.replace(f"={fixed}", f"={free}")
        assert block.count("/tmp/ray-mine") == 4, block
        block = block.replace("/tmp/ray-mine", str(work / "rm"))
        start, stop = block.split("\nkill ", 1)
        stop = "kill " + stop
        mark = uuid.uuid4().hex
        env = {**job_head["env"], "AR_TEST_MINE": mark}
        subprocess.run(["bash", "-c", start], env=env, cwd=work, check=True, timeout=30)
        gcs = int(ports["6390"])
        wait_for(lambda: _listening(gcs), 90, "the second head to listen")
        assert pids_with_env(mark)
        subprocess.run(["bash", "-c", stop], env=env, cwd=work, check=True, timeout=30)
        wait_for(lambda: not pids_with_env(mark), 60, "the second head's processes to exit")
        assert _job_api_ready(job_head["address"], job_head["token"])  # the other Ray lives on
    finally:
        for pid in pids_with_env(f"AR_TEST_MINE={mark}") if "mark" in locals() else []:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(work, ignore_errors=True)
