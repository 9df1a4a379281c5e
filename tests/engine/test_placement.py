"""How many trainers fit: `cluster.plan` node by node, as Ray places actors (pure, no Ray)."""

from __future__ import annotations

import pytest

from ar_ray.engine import cluster
from ar_ray.engine.config import RunConfig
from ar_ray.errors import ConfigError


def cfg(**kw) -> RunConfig:
    return RunConfig(target="unused", run_dir="unused", **kw)


def nodes(k: int, gpus: float, cpus: float) -> list[dict]:
    return [{"GPU": gpus, "CPU": cpus, "node": f"10.0.0.{i}"} for i in range(k)]


HEAD = {"CPU": 4.0, "node": "head"}  # a head without GPUs holds no GPU trainer


def test_gpus_of_a_trainer_must_be_on_one_node():
    """2 nodes x 8 GPUs at 3 GPUs each: 2 per node, 4 in all (the totals would say 5)."""
    p = cluster.plan(cfg(gpus_per_trainer=3), nodes(2, 8, 16) + [HEAD])
    assert (p.trainers, p.gpus, p.cpus) == (4, 3, 1.0)
    with pytest.raises(ConfigError, match=r"needs 15 GPUs; the cluster has 16, and 4 trainers of 3 GPUs and 1 CPU "
                                          r"fit .*2 nodes of 8 GPUs and 16 CPUs: 2 trainers each.*at most 4"):
        cluster.plan(cfg(trainers=5, gpus_per_trainer=3), nodes(2, 8, 16))
    assert cluster.plan(cfg(trainers=4, gpus_per_trainer=3), nodes(2, 8, 16)).trainers == 4


def test_fractions_share_one_gpu():
    """0.3 of a GPU on 8 GPUs: 3 per GPU, 24 (the totals would say 26)."""
    p = cluster.plan(cfg(gpus_per_trainer=0.3, cpus_per_trainer=1), nodes(1, 8, 64))
    assert p.trainers == 24 and p.gpus == 0.3
    with pytest.raises(ConfigError, match=r"needs 7.5 GPUs; the cluster has 8, and 24 trainers .*3 per GPU at 0.3"):
        cluster.plan(cfg(trainers=25, gpus_per_trainer=0.3), nodes(1, 8, 64))
    assert cluster.plan(cfg(gpus_per_trainer=0.5), nodes(2, 4, 64)).trainers == 16
    assert cluster.plan(cfg(gpus_per_trainer=0.25), nodes(1, 1, 64)).trainers == 4  # 1 / 0.25 is exactly 4


def test_nothing_fits_is_an_error_not_a_silent_wait():
    """4 one-GPU nodes at 2 GPUs each: none fit (the totals would say 2)."""
    with pytest.raises(ConfigError, match=r"no node of the cluster can hold one trainer of 2 GPUs and 1 CPU \(4 nodes "
                                          r"of 1 GPUs and 8 CPUs: 0 trainers each\)"):
        cluster.plan(cfg(gpus_per_trainer=2), nodes(4, 1, 8))
    with pytest.raises(ConfigError, match="no node of the cluster can hold"):
        cluster.plan(cfg(trainers=1, gpus_per_trainer=2), nodes(4, 1, 8))


def test_cpus_of_a_node_bound_its_trainers():
    # 8 GPUs but 6 CPUs at 2 CPUs per trainer: 3 on that node; 2 on the other (2 GPUs)
    p = cluster.plan(cfg(cpus_per_trainer=2), [{"GPU": 8, "CPU": 6}, {"GPU": 2, "CPU": 32}])
    assert p.trainers == 5
    with pytest.raises(ConfigError, match=r"needs 6 GPUs; the cluster has 10, and 5 trainers"):
        cluster.plan(cfg(trainers=6, cpus_per_trainer=2), [{"GPU": 8, "CPU": 6}, {"GPU": 2, "CPU": 32}])


def test_cpu_only_cluster():
    # one per 2 CPUs by default, per node: 3 nodes of 3 CPUs hold 1 each (the totals would say 4)
    p = cluster.plan(cfg(), nodes(3, 0, 3))
    assert (p.trainers, p.gpus, p.cpus) == (3, 0.0, 2.0)
    with pytest.raises(ConfigError, match=r"4 trainers x 2 CPUs each needs 8 CPUs; the cluster has 9, and 3 trainers"):
        cluster.plan(cfg(trainers=4), nodes(3, 0, 3))
    assert cluster.plan(cfg(cpus_per_trainer=1), nodes(3, 0, 3)).trainers == 9
    assert cluster.plan(cfg(), [{"CPU": 1.0}]).trainers == 1  # a one-CPU machine: one trainer of 1 CPU
    with pytest.raises(ConfigError, match="no GPU"):
        cluster.plan(cfg(trainers=2, gpus_per_trainer=0.5), nodes(2, 0, 8))


def test_one_machine_as_a_dict():
    """A single dict is one node (a local machine), as before."""
    p = cluster.plan(cfg(), {"CPU": 8.0, "GPU": 4.0})
    assert (p.trainers, p.gpus, p.cpus) == (4, 1.0, 1.0)
    with pytest.raises(ConfigError, match="needs 4.5 GPUs; the cluster has 4"):
        cluster.plan(cfg(trainers=9, gpus_per_trainer=0.5), {"CPU": 8.0, "GPU": 4.0})
    assert cluster.plan(cfg(gpus_per_trainer=0), {"CPU": 8.0, "GPU": 4.0}).gpus == 0.0  # CPU trainers on purpose


@pytest.mark.parametrize("node, gpus, cpus, fits", [
    ({"GPU": 8, "CPU": 16}, 3, 1, 2),
    ({"GPU": 8, "CPU": 16}, 0.3, 1, 16),  # 24 by GPU, 16 by CPU
    ({"GPU": 8, "CPU": 16}, 0.3, 0.5, 24),
    ({"GPU": 1, "CPU": 8}, 2, 1, 0),
    ({"CPU": 8}, 1, 1, 0),
    ({"CPU": 8}, 0, 2, 4),
    ({"GPU": 3, "CPU": 3}, 1 / 3, 0.1, 9),
])
def test_fits_on_node(node, gpus, cpus, fits):
    assert cluster.fits_on_node(node, gpus, cpus) == fits


class _Stub:
    """Just enough of an actor handle and of `ray` for cluster.wait_started, without Ray."""

    class Method:
        def __init__(self, ref):
            self.ref = ref

        def remote(self):
            return self.ref

    def __init__(self, ref, method="ping"):
        setattr(self, method, self.Method(ref))


class _FakeRay:
    """ray.wait returns one ready ref at a time; with none ready it waits out its timeout on a fake clock."""

    def __init__(self, up):
        self.up, self.got, self.now = up, [], 0.0

    def monotonic(self):
        return self.now

    def wait(self, refs, num_returns, timeout):
        ready = [r for r in refs if r in self.up][:num_returns]
        if not ready:
            self.now += timeout
        return ready, [r for r in refs if r not in ready]

    def get(self, refs):
        if "dead" in refs:
            raise RuntimeError("the actor died in its constructor")
        self.got += list(refs)
        return list(refs)


def test_startup_that_never_comes_is_an_error_naming_who(monkeypatch):
    fake = _FakeRay(up={"t0", "q0"})
    monkeypatch.setattr(cluster, "ray", fake)
    monkeypatch.setattr(cluster, "time", fake)
    trainers = [_Stub("t0"), _Stub("t1"), _Stub("t2")]
    proposers = [_Stub("q0", "baseline_version")]
    p = cluster.Plan(trainers=3, gpus=3, cpus=1)
    with pytest.raises(cluster.StartupError, match=r"2 of 4 actors did not start within 120 s: trainer-1, trainer-2 "
                                                   r"\(each trainer asks for 3 GPUs and 1 CPU on one node\)"):
        cluster.wait_started(trainers, proposers, p=p)
    assert fake.now == cluster.STARTUP_TIMEOUT and sorted(fake.got) == ["q0", "t0"]
    assert issubclass(cluster.StartupError, ConfigError)  # the CLI shows it as a user error, not a traceback
    fake.up, fake.now = {"t0", "t1", "t2"}, 0.0
    cluster.wait_started(trainers, timeout=5)
    assert fake.now == 0.0
    # an actor that died is its own error, at once, not after the timeout
    fake.up = {"dead"}
    with pytest.raises(RuntimeError, match="died"):
        cluster.wait_started([_Stub("dead"), _Stub("t9")], timeout=5)
    assert fake.now == 0.0
