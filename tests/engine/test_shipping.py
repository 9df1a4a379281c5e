"""Code shipping: joining a cluster sends ar_ray, trainers and proposers to the nodes through runtime_env py_modules.

The cluster test runs a real one-node ray.cluster_utils.Cluster: the actor's modules must come from Ray's
runtime-resources dir (the unpacked upload), not from this checkout, and what the excludes name must not travel.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import uuid
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

import ar_ray
import proposers
import trainers
from ar_ray.engine import cluster as cluster_mod
from ar_ray.engine import shipping
from ar_ray.engine.shipping import ShippingError, package_runtime_env

REPO = Path(ar_ray.__file__).resolve().parent.parent
PKG_DIRS = [str(Path(m.__file__).resolve().parent) for m in (ar_ray, trainers, proposers)]


def test_runtime_env_lists_packages_and_excludes():
    existing = {"env_vars": {"A": "1"}, "excludes": ["*.tmp"]}
    env = package_runtime_env(existing)
    assert env["py_modules"] == PKG_DIRS
    for pat in ["__pycache__", "*.pyc", "runs", ".venv", ".git", ".cache", "*.parquet", "*.tmp"]:
        assert pat in env["excludes"], pat
    assert "ledger" not in env["excludes"]  # ar_ray/ledger is a package; a ledger's parts are *.parquet
    assert env["env_vars"] == {"A": "1"}
    assert existing == {"env_vars": {"A": "1"}, "excludes": ["*.tmp"]}  # not mutated
    # nothing the default target needs is excluded
    assert not {"*.py", "*.toml", "*.md", "gpt"} & set(env["excludes"])
    # a placeholder working_dir (keeps Ray from putting the driver's cwd before py_modules), unless one is given
    assert sorted(os.listdir(env["working_dir"])) == ["README"]
    assert package_runtime_env({"working_dir": "/somewhere"})["working_dir"] == "/somewhere"


def test_placeholder_working_dir_is_private(tmp_path):
    """The placeholder is first on every worker's PYTHONPATH: it lives in the user's own cache, mode 700, not at
    a fixed /tmp path another user could create first, and is reused across calls (one upload serves all)."""
    d = shipping.placeholder_working_dir()
    assert Path(d) == Path.home() / ".cache" / "ar-ray" / "workdir"
    assert Path(d) != Path(tempfile.gettempdir()) / f"ar-ray-workdir-{os.getuid()}"  # the old, guessable one
    assert shipping.placeholder_working_dir() == d
    st = os.lstat(d)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077
    assert os.listdir(d) == ["README"] and Path(d, "README").read_text() == shipping.PLACEHOLDER_TEXT

    # a fresh root: made, and a stale README rewritten, without a temporary file left inside the folder
    root = tmp_path / "cache"
    d = shipping.placeholder_working_dir(root)
    Path(d, "README").write_text("old")
    assert shipping.placeholder_working_dir(root) == d == str(root / "workdir")
    assert os.listdir(d) == ["README"] and Path(d, "README").read_text() == shipping.PLACEHOLDER_TEXT


@pytest.mark.parametrize("plant", ["foreign file", "group writable", "other writable", "symlink", "readme link"])
def test_planted_placeholder_working_dir_is_refused(tmp_path, plant):
    """A folder someone else prepared (with a numpy.py inside, writable by all, or a link elsewhere) is not
    shipped: the error names the folder to delete."""
    root = tmp_path / "cache"
    d = root / "workdir"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "README").write_text(shipping.PLACEHOLDER_TEXT)
    root.mkdir()
    if plant == "symlink":
        d.symlink_to(elsewhere)
    else:
        d.mkdir(mode=0o700)
        (d / "README").write_text(shipping.PLACEHOLDER_TEXT)
    if plant == "foreign file":
        (d / "numpy.py").write_text("print('owned')\n")
    elif plant == "group writable":
        d.chmod(0o770)
    elif plant == "other writable":
        d.chmod(0o777)
    elif plant == "readme link":
        (d / "README").unlink()
        (d / "README").symlink_to(elsewhere / "README")
    with pytest.raises(ShippingError, match=rf"placeholder working_dir {re.escape(str(d))} .*rm -r {re.escape(str(d))}"):
        shipping.placeholder_working_dir(root)
    # once deleted, the normal path works again
    if d.is_symlink() or not d.is_dir():
        d.unlink()
    else:
        shutil.rmtree(d)
    assert shipping.placeholder_working_dir(root) == str(d) and os.listdir(d) == ["README"]


def test_placeholder_working_dir_owned_by_someone_else_is_refused(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    (root / "workdir").mkdir(parents=True, mode=0o700)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(root).st_uid + 1)  # as if another user had made it
    with pytest.raises(ShippingError, match="is owned by uid"):
        shipping.placeholder_working_dir(root)


def test_placeholder_working_dir_without_a_writable_home(monkeypatch):
    """No usable cache folder (a read-only or missing home): a fresh private mkdtemp, made once per process."""
    monkeypatch.setattr(shipping, "_fallback_dir", None)
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: Path("/proc/ar-ray-no-home")))
    d = shipping.placeholder_working_dir()
    try:
        assert shipping.placeholder_working_dir() == d and Path(d).name.startswith("ar-ray-workdir-")
        assert Path(d) != Path(tempfile.gettempdir()) / f"ar-ray-workdir-{os.getuid()}"
        assert not os.stat(d).st_mode & 0o077 and os.listdir(d) == ["README"]
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_too_big_names_the_big_files():
    with pytest.raises(ShippingError, match=r"largest: .*\.py \("):
        package_runtime_env(max_bytes=1000)


@pytest.fixture()
def planted():
    """Things that must not ship, put into the trainers package for the test (and removed after).

    Outside trainers/gpt: tests running beside this one read the default target's folder."""
    tag = uuid.uuid4().hex[:8]
    root = Path(trainers.__file__).resolve().parent
    made = [root / "runs", root / f"myrun-{tag}"]
    pyc = root / "__pycache__" / f"planted_{tag}.cpython-311.pyc"
    try:
        (root / "runs").mkdir()
        (root / "runs" / "x.bin").write_bytes(b"\0" * 1024)
        run_dir = made[1]
        (run_dir / "ledger").mkdir(parents=True)
        (run_dir / "run.json").write_text("{}")
        (run_dir / "notes.txt").write_text("a run dir put inside the package")
        pyc.parent.mkdir(exist_ok=True)
        pyc.write_bytes(b"junk")
        yield {"tag": tag, "pyc": pyc.name, "run_dir": run_dir.name}
    finally:
        for d in made:
            shutil.rmtree(d, ignore_errors=True)
        pyc.unlink(missing_ok=True)


@pytest.fixture()
def head():
    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0, "include_dashboard": False})
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


class Probe:
    def where(self):
        import ar_ray.ledger.store
        import trainers.trainer
        root = os.path.dirname(os.path.dirname(trainers.trainer.__file__))
        shipped = sorted(os.path.relpath(os.path.join(d, n), root) for d, _, ns in os.walk(root) for n in ns)
        return {"trainer": trainers.trainer.__file__, "ledger": ar_ray.ledger.store.__file__,
                "env": os.environ.get("AR_PROBE"), "shipped": shipped}


def probe() -> dict:
    # an actor with its own env_vars, as start_trainers makes them: it must still inherit the job's py_modules
    actor = ray.remote(Probe).options(num_cpus=0, runtime_env={"env_vars": {"AR_PROBE": "yes"}}).remote()
    try:
        return ray.get(actor.where.remote(), timeout=60)
    finally:
        ray.kill(actor)


@pytest.mark.timeout(120)
def test_joining_a_cluster_ships_the_packages(head, planted, monkeypatch):
    # the driver runs inside the checkout, as on a `ray up` head node: the checkout must not shadow the shipped code
    monkeypatch.chdir(REPO)
    assert cluster_mod.connect(head.address) is False
    got = probe()
    assert got["env"] == "yes"
    for f in (got["trainer"], got["ledger"]):
        assert "runtime_resources" in f and not f.startswith(str(REPO)), f
    assert got["trainer"].endswith(os.path.join("trainers", "trainer.py"))
    shipped = set(got["shipped"])
    assert os.path.join("trainers", "gpt", "train.py") in shipped  # the default target's files travel too
    assert {os.path.join("trainers", "gpt", f) for f in ("prepare.py", "ar-ray.toml", "program.md")} <= shipped
    assert os.path.join("trainers", "reaper.py") in shipped
    assert not [f for f in shipped if f.split(os.sep)[1] == "runs"], shipped  # run dir
    assert not [f for f in shipped if planted["run_dir"] in f], shipped  # a run dir found by its run.json
    assert not [f for f in shipped if f.endswith(".bin") or planted["pyc"] in f], shipped

    # ship_code=False: workers import the package the node has installed (here: this checkout)
    ray.shutdown()
    assert cluster_mod.connect(head.address, ship_code=False) is False
    got = probe()
    assert got["trainer"] == str(REPO / "trainers" / "trainer.py"), got["trainer"]
