"""deploy/skypilot.yaml uses only SkyPilot task fields, of the types SkyPilot accepts, and its scripts parse.

SkyPilot is not installed for this (it is heavy): the fields and types below are those of SkyPilot's task
schema (`get_task_schema` and `get_resources_schema` in sky/utils/schemas.py, skypilot-org/skypilot at commit
00052dfe0d132c5ad6aa9a175572b0695f747c80) and its documented YAML reference
(https://docs.skypilot.co/en/latest/reference/yaml-spec.html), restated here for the fields a task like this
one can use. The `setup` and `run` scripts go through `bash -n`, the Python in `run` through `compile`, the
`ar-ray run` line through ar-ray's own option parser; the SkyPilot variables `run` reads are the documented ones.

Then `run` itself, as written, on machine 0 of a one-machine cluster with the variables SkyPilot sets: a Ray of
its own with token auth, `ar-ray run` on a toy target, the ledger, and that Ray stopped by its process at the end
(in namespaces of its own, so that its fixed ports and temp dir meet no other Ray here). The workers' branch
(`ray start --address ... --block`) needs a second machine and is only parsed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import jsonschema
import pytest
import yaml
from helpers_targets import pids_with_env, wait_for
from toys import make_toy

from ar_ray.ledger import store as ledger

REPO = Path(__file__).resolve().parents[1]
TASK = REPO / "deploy" / "skypilot.yaml"

_STR_OR_NULL = {"type": ["string", "null"]}
_ENV_NAME = "^[a-zA-Z_][a-zA-Z0-9_]*$"
RESOURCES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "infra": {"type": "string"}, "cloud": {"type": "string"}, "region": {"type": "string"},
        "zone": {"type": "string"}, "cpus": {"type": ["string", "number"]}, "memory": {"type": ["string", "number"]},
        "accelerators": {"anyOf": [{"type": "string"}, {"type": "object"}, {"type": "array"}]},
        "instance_type": {"type": "string"}, "use_spot": {"type": "boolean"},
        "disk_size": {"type": ["string", "integer"]}, "disk_tier": {"type": "string"},
        "network_tier": {"type": "string"}, "image_id": {"type": ["string", "object", "null"]},
        "ports": {"type": ["string", "integer", "array", "null"]}, "labels": {"type": "object"},
        "autostop": {"type": ["boolean", "string", "integer", "object"]}, "job_recovery": {"type": ["string", "object"]},
        "max_hourly_cost": {"type": "number"}, "any_of": {"type": "array"}, "ordered": {"type": "array"},
    },
}
TASK_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "workdir": {"type": ["string", "object"]},
        "num_nodes": {"type": "integer", "minimum": 1},
        "resources": RESOURCES,
        "envs": {"type": "object", "patternProperties": {_ENV_NAME: _STR_OR_NULL}, "additionalProperties": False},
        "secrets": {"type": "object", "patternProperties": {_ENV_NAME: _STR_OR_NULL}, "additionalProperties": False},
        "file_mounts": {"type": "object"},
        "setup": {"type": "string"},
        "run": {"type": "string"},
        "config": {"type": "object"},
        "volumes": {"type": "object"},
    },
}
# the variables SkyPilot sets for `run` (docs: running-jobs/environment-variables, distributed-jobs)
SKYPILOT_VARS = {"SKYPILOT_NODE_RANK", "SKYPILOT_NODE_IPS", "SKYPILOT_NUM_NODES", "SKYPILOT_NUM_GPUS_PER_NODE",
                 "SKYPILOT_TASK_ID", "SKYPILOT_CLUSTER_INFO", "SKYPILOT_SETUP_NODE_RANK", "SKYPILOT_SETUP_NODE_IPS"}


@pytest.fixture(scope="module")
def task() -> dict:
    return yaml.safe_load(TASK.read_text())


def _errors(task: dict) -> list[str]:
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                  for e in jsonschema.Draft7Validator(TASK_SCHEMA).iter_errors(task))


def test_task_uses_skypilot_fields_only(task):
    assert _errors(task) == []


@pytest.mark.parametrize("broken, where", [
    ({"num_node": 2}, "<root>"),                       # misspelled field
    ({"num_nodes": "2"}, "num_nodes"),                 # wrong type
    ({"resources": {"accelerator": "H100:8"}}, "resources"),
    ({"envs": {"AR-RAY-RUN": "x"}}, "envs"),           # not an environment variable name
])
def test_the_field_check_can_fail(task, broken, where):
    assert any(e.startswith(f"{where}: ") for e in _errors({**task, **broken})), _errors({**task, **broken})


def test_gpus_per_machine_and_machines(task):
    name, _, count = task["resources"]["accelerators"].partition(":")
    assert name and int(count or 1) >= 1
    assert task["num_nodes"] >= 1


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
@pytest.mark.parametrize("section", ["setup", "run"])
def test_scripts_parse(task, section):
    out = subprocess.run(["bash", "-n"], input=task[section], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


def test_run_reads_documented_variables_and_never_stops_skypilots_ray(task):
    run = task["run"]
    used = set(re.findall(r"\$\{?(SKYPILOT_\w+)", run))
    assert used and used <= SKYPILOT_VARS, used - SKYPILOT_VARS
    for name in set(re.findall(r"\$\{?(AR_RAY_\w+)", run)):
        assert name in task["envs"], f"run reads {name}, which envs does not set"
    assert "RAY_AUTH_TOKEN" in task["secrets"] and "RAY_AUTH_MODE=token" in run
    assert not re.search(r"\bray stop\b", task["setup"] + run), "`ray stop` would stop SkyPilot's own Ray too"
    assert re.search(r"--port=6379\b", run) and "6380" not in run and "8266" not in run  # SkyPilot's ports


def test_run_python_compiles(task):
    blocks = re.findall(r"<<'EOF'\n(.*?)\nEOF\n", task["run"], re.S)
    assert blocks
    for block in blocks:
        compile(block, "skypilot.yaml:run", "exec")


def test_ar_ray_run_line_parses_with_the_tasks_options(task):
    from ar_ray.cli.main import main
    line = next(ln.strip() for ln in task["run"].splitlines() if ln.strip().startswith("ar-ray run "))
    values = {**{k: str(v) for k, v in task["envs"].items()}, "address": "10.0.0.1:6379", "HOME": "/home/u"}
    argv = shlex.split(re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], line))
    with main.commands["run"].make_context("ar-ray run", argv[2:]) as ctx:
        assert ctx.params["address"] == "10.0.0.1:6379"
        assert ctx.params["run_dir"] == "/home/u/ar-ray-runs/run-1"
        assert ctx.params["max_experiments"] == 500


# ---------------------------------------------------------------- the run script, run as SkyPilot runs it

def _namespace() -> list[str] | None:
    """A prefix that runs a command in network and mount namespaces of its own, or None where not allowed.

    The task's Ray uses fixed ports (6379, 8265, ...) and a fixed temp dir; a network namespace (only its own
    loopback) and a tmpfs over the temp dir keep it apart from every other Ray on this machine. No PID namespace:
    ar-ray's reapers name their cgroups by PID and clear those whose PID is gone from /proc, so a run in a PID
    namespace and one outside, sharing the cgroup hierarchy, would each take the other's cgroups for stale and
    kill them. Processes left behind are found by a mark in their environment instead.
    """
    if not shutil.which("unshare"):
        return None
    for prefix in (["unshare", "--net", "--mount", "--fork", "--kill-child"],
                   ["unshare", "--user", "--map-root-user", "--net", "--mount", "--fork", "--kill-child"]):
        if subprocess.run([*prefix, sys.executable, "-c", LOOPBACK_UP], capture_output=True, timeout=30).returncode == 0:
            return prefix
    return None


# `ip link set lo up` without iproute2: a new network namespace's loopback starts down
LOOPBACK_UP = """
import fcntl, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH", b"lo", 0))[:18])[1]  # SIOCGIFFLAGS
fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))  # SIOCSIFFLAGS, IFF_UP
"""


@pytest.mark.timeout(300)
def test_run_script_runs_ar_ray_on_a_one_machine_cluster(task):
    """`run` as written, on machine 0 of 1: its own Ray head with token auth, `ar-ray run`, then that Ray stops."""
    prefix = _namespace()
    if prefix is None:
        pytest.skip("no network namespace here (unshare): the task's fixed ports could meet another Ray")
    mark = uuid.uuid4().hex
    temp = re.search(r"--temp-dir=(\S+)", task["run"]).group(1)
    work = Path(tempfile.mkdtemp(prefix="sky-"))  # short: Ray's socket paths must stay under 108 bytes
    try:
        home = work / "home"
        (home / "ar-ray-venv" / "bin").mkdir(parents=True)  # what `setup` makes: here, this test's environment
        (home / "ar-ray-venv" / "bin" / "activate").write_text(f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
        target = make_toy(work / "target", "[target]\nenv = { TOY_SLEEP = '0.1' }\n")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RAY_", "SKYPILOT_", "AR_RAY_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(AR_SKY_TEST=mark, HOME=str(home), SKYPILOT_NODE_IPS="127.0.0.1\n", SKYPILOT_NODE_RANK="0",
                   SKYPILOT_NUM_NODES="1", SKYPILOT_NUM_GPUS_PER_NODE="0", RAY_AUTH_TOKEN=uuid.uuid4().hex,
                   AR_RAY_RUN="run-t",
                   AR_RAY_ARGS=f"--target {target} --max-experiments 2 --trainers 1 --acceptance greedy")
        os.makedirs(temp, exist_ok=True)
        prelude = f"set -e; {shlex.quote(sys.executable)} -c {shlex.quote(LOOPBACK_UP)}; mount -t tmpfs tmpfs {temp}\n"
        out = subprocess.run([*prefix, "bash", "-c", prelude + task["run"]], cwd=work, env=env,
                             capture_output=True, text=True, timeout=240)
        text = out.stdout + out.stderr
        assert out.returncode == 0, text[-5000:]
        run_dir = home / "ar-ray-runs" / "run-t"
        df = ledger.load(run_dir)
        ran = df[df.decision != "skip"]
        assert (ran.role == "baseline").sum() >= 1 and (ran.role == "screen").sum() == 2, ran
        assert set(ran.status) == {"ok"}
        assert f"run dir: {socket.gethostname()}:{run_dir}" in text, text[-3000:]
        head_log = (home / "ar-ray-head.log").read_text()
        assert "received SIGTERM" in head_log, head_log[-3000:]  # stopped by its process (the trap), not `ray stop`
        wait_for(lambda: not pids_with_env(f"AR_SKY_TEST={mark}\0"), 60, "the task's Ray processes to exit")
    finally:
        for pid in pids_with_env(f"AR_SKY_TEST={mark}\0"):  # none when the script ended as it should
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(temp)  # the mount point, empty: what Ray wrote was on the namespace's tmpfs
