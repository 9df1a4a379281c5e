"""cluster.yaml is a config Ray's cluster launcher (`ray up`) accepts, and it starts ar-ray with token auth.

Validation runs offline, the way `ray up` does before it contacts any machine: `prepare_config` (for the
local provider: one internal node type, min/max workers moved onto it, defaults merged), then
`validate_config` against `ray/autoscaler/ray-schema.json`.
"""

from __future__ import annotations

import copy
import shlex
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
    remote = f"/home/{config['auth']['ssh_user']}/{_get_default_token_path().relative_to(Path.home())}"
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
