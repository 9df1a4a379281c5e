"""cluster.yaml is a config Ray's cluster launcher (`ray up`) accepts, and it starts ar-ray with token auth.

Validation runs offline, the way `ray up` does before it contacts any machine: `prepare_config` (for the
local provider: one internal node type, min/max workers moved onto it, defaults merged), then
`validate_config` against `ray/autoscaler/ray-schema.json`.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def ray_start(commands: list[str]) -> list[str]:
    """The argv of the `ray start` command among `commands` (env assignments before it kept)."""
    starts = [shlex.split(c) for c in commands if "ray start" in c]
    assert len(starts) == 1, commands
    return starts[0]


def test_names_what_the_local_provider_needs(config):
    assert config["cluster_name"]
    provider = config["provider"]
    assert provider["type"] == "local"
    assert provider["head_ip"] and provider["worker_ips"] and provider["head_ip"] not in provider["worker_ips"]
    assert config["auth"]["ssh_user"]
    assert config.get("min_workers", 0) <= config.get("max_workers", len(provider["worker_ips"])) \
        <= len(provider["worker_ips"])


def test_setup_installs_this_package_from_its_mount(config):
    mounts = config["file_mounts"]
    package_dirs = [remote for remote, local in mounts.items() if local in (".", "./")]
    assert len(package_dirs) == 1, mounts
    installs = [c for c in config["setup_commands"] if "pip install" in c]
    assert any(package_dirs[0] in shlex.split(c) for c in installs), installs
    assert ".venv" in config.get("rsync_exclude", [])  # a local virtualenv is not copied to every node


def test_head_and_workers_start_ray_with_token_auth(config):
    head = ray_start(config["head_start_ray_commands"])
    worker = ray_start(config["worker_start_ray_commands"])
    assert "--head" in head
    assert any(a.startswith("--autoscaling-config=") for a in head)
    assert any(a.startswith("--address=") and "$RAY_HEAD_IP" in a for a in worker) and "--head" not in worker
    for argv in head, worker:
        assert "RAY_AUTH_MODE=token" in argv[: argv.index("ray")], argv  # the env of that very command
    # the token is where Ray looks for it (~/.ray/auth_token) on every node
    from ray._private.authentication.authentication_token_setup import _get_default_token_path
    remote = f"~/{_get_default_token_path().relative_to(Path.home())}"
    assert remote in config["file_mounts"], config["file_mounts"]
    # the dashboard (and the job API) is not exposed beyond the head
    assert "--dashboard-host=127.0.0.1" in head


def test_passes_rays_own_validation(config):
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    node_types = prepared["available_node_types"]
    (only,) = node_types.values()
    n = len(config["provider"]["worker_ips"])
    assert only["min_workers"] == config.get("min_workers", n) and only["max_workers"] == prepared["max_workers"] == n
    assert prepared["head_node_type"] in node_types
    # the merged defaults keep our commands
    assert prepared["head_start_ray_commands"] == config["head_start_ray_commands"]
    assert prepared["worker_start_ray_commands"] == config["worker_start_ray_commands"]


def test_rays_validation_is_not_a_rubber_stamp(config):
    """The same check refuses a typo in a key, so passing it above means something."""
    pytest.importorskip("jsonschema")
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = copy.deepcopy(config)
    broken["worker_start_commands"] = broken.pop("worker_start_ray_commands")
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_names_no_user_or_home_of_its_own():
    """Remote paths are relative to the ssh user's home, so another user edits only the marked lines."""
    text = CLUSTER_YAML.read_text()
    assert not re.search(r"/home/|/Users/|/root/", text), re.findall(r"\S*(?:/home/|/Users/|/root/)\S*", text)
    marked = [line for line in text.splitlines() if "# EDIT" in line]
    assert any("head_ip" in line for line in marked) and any("worker_ips" in line for line in marked)
    assert any("ssh_user" in line for line in marked) and any("ssh_private_key" in line for line in marked)


def _fake_bin(tmp_path, names: dict[str, str]) -> Path:
    """A folder of fake commands, each a shell script."""
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    for name, body in names.items():
        (d / name).write_text(f"#!/bin/sh\n{body}\n")
        (d / name).chmod(0o755)
    return d


def _run(cmd: str, tmp_path, fakes: Path) -> str:
    env = {"HOME": str(tmp_path), "PATH": f"{fakes}:/usr/bin:/bin", "LOG": str(tmp_path / "log")}
    subprocess.run(["bash", "-c", cmd], env=env, check=True, timeout=30)
    return (tmp_path / "log").read_text() if (tmp_path / "log").exists() else ""


@pytest.mark.parametrize("gpu", [False, True])
def test_setup_installs_the_cpu_torch_wheel_where_there_is_no_gpu(config, tmp_path, gpu):
    (torch,) = [c for c in config["setup_commands"] if "torch" in c and "nvidia-smi" in c]
    fakes = {"uv": 'echo "uv $*" >> "$LOG"'}
    if gpu:
        fakes["nvidia-smi"] = "exit 0"
    log = _run(torch, tmp_path, _fake_bin(tmp_path, fakes))
    assert log.startswith("uv pip install") and "torch" in log
    assert ("download.pytorch.org/whl/cpu" in log) is (not gpu), log


def test_start_commands_run_the_virtualenvs_ray_and_turn_autoscaler_v2_off(config, tmp_path):
    """`ray up` prefixes the head's start commands with `export RAY_enable_autoscaler_v2=1;` (Ray >= 2.50), which
    does not support the local provider (workers never start): the head's own command turns it off again."""
    from ray.autoscaler._private.util import with_envs

    venv_bin = tmp_path / "ar-ray-venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "ray").write_text('#!/bin/sh\necho "venv-ray $* v2=$RAY_enable_autoscaler_v2 auth=$RAY_AUTH_MODE" >> "$LOG"\n')
    (venv_bin / "ray").chmod(0o755)
    fakes = _fake_bin(tmp_path, {"ray": 'echo "system-ray $*" >> "$LOG"'})
    head = with_envs(config["head_start_ray_commands"], {"RAY_enable_autoscaler_v2": "1"})
    log = _run(" && ".join(head), tmp_path, fakes)
    assert "system-ray" not in log
    start = [line for line in log.splitlines() if "venv-ray start" in line]
    assert len(start) == 1 and "v2=0" in start[0] and "auth=token" in start[0], log
    os.remove(tmp_path / "log")
    log = _run(" && ".join(c.replace("$RAY_HEAD_IP", "10.0.0.10") for c in config["worker_start_ray_commands"]),
               tmp_path, fakes)
    assert "system-ray" not in log and "venv-ray start --address=10.0.0.10:6379" in log and "auth=token" in log
