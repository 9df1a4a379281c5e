"""Joining Ray and placing the actors: how many trainers, with which resources."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

import ray

from ar_ray.engine.config import RunConfig
from ar_ray.errors import ConfigError
from ar_ray.target import Target
from proposers.actor import KeyHolder, ProposerActor
from proposers.base import proposer_seed
from trainers.actor import TrainerActor

NAMESPACE = "ar-ray"  # runs on one cluster share named actors here, e.g. an LLM endpoint's rate limiter


@dataclass(frozen=True)
class Plan:
    trainers: int
    gpus: float  # per trainer
    cpus: float  # per trainer


def connect(address: str | None, ship_code: bool = True) -> bool:
    """Start an embedded local Ray (address None) or join a cluster. Returns True if we started it.

    Joining a cluster ships this driver's packages to every node (ar_ray.engine.shipping) unless ship_code is False
    (the package is then installed on each node, e.g. by cluster.yaml's setup commands). Inside a Ray job (`ray job
    submit ... -- ar-ray run --address auto`) the job's runtime env is reused: nothing is added when it ships ar-ray
    already (say, `--working-dir` of a checkout), our py_modules are merged into it otherwise."""
    if ray.is_initialized():
        return False
    if address is None:
        try:
            ray.init("local", include_dashboard=False, log_to_driver=False, configure_logging=False, namespace=NAMESPACE)
        except Exception as e:
            if "timed out during startup" not in str(e):
                raise
            ray.shutdown()  # what did start of it (only this driver's own Ray)
            raise ConfigError(
                "the local Ray did not start in time: its raylet did not register within Ray's 30 s (\"The current node "
                "timed out during startup\"), which happens on a loaded machine or one short of memory. Nothing was "
                "run. Try again when the machine is less busy (see `uptime`, `free -g`), or start Ray once yourself "
                "with `ray start --head` and pass --address auto; Ray's own logs are in its temp folder (by default /tmp/ray/session_latest/logs)."
            ) from None
        return True
    from ar_ray.engine.shipping import driver_runtime_env
    runtime_env, override = (driver_runtime_env()[:2]) if ship_code else (None, False)
    saved = os.environ.get(OVERRIDE_ENV)
    try:
        if override:  # our env holds the job's fields, each extended (py_modules, excludes): Ray then takes ours
            os.environ[OVERRIDE_ENV] = "1"
        ray.init(address=address, log_to_driver=False, namespace=NAMESPACE, runtime_env=runtime_env)
    except ConnectionError as e:
        raise ConfigError(f"cannot join the Ray cluster at {address!r}: {e}. Is it running? Start it with "
                          "`ray start --head` (or `ray up cluster.yaml`), or leave out --address to run on this "
                          "machine. If its log above says InvalidAuthToken, this machine lacks the cluster's token: "
                          "copy it to ~/.ray/auth_token, or set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH.") from None
    finally:
        if override:
            if saved is None:
                os.environ.pop(OVERRIDE_ENV, None)
            else:
                os.environ[OVERRIDE_ENV] = saved
    return False


OVERRIDE_ENV = "RAY_OVERRIDE_JOB_RUNTIME_ENV"  # ray.init's runtime_env wins over a Ray job's, field by field


EPS = 1e-9  # resource arithmetic in floats: 0.3 * 3 is not quite 0.9


def fits_on_node(node: Mapping, gpus: float, cpus: float) -> int:
    """How many trainers of `gpus` GPUs and `cpus` CPUs Ray can place on one node of these total resources.

    Ray places an actor on one node, so a trainer's GPUs and CPUs all come from the same node; a fraction of a
    GPU (gpus < 1) is carved out of one GPU, so a GPU holds floor(1 / gpus) of them and the rest of it is lost."""
    node_gpus = float(node.get("GPU", 0) or 0)
    node_cpus = float(node.get("CPU", 0) or 0)
    n = math.floor(node_cpus / cpus + EPS) if cpus > 0 else math.inf
    if gpus >= 1:
        n = min(n, math.floor(node_gpus / gpus + EPS))
    elif gpus > 0:
        n = min(n, math.floor(node_gpus + EPS) * math.floor(1 / gpus + EPS))
    return 0 if n == math.inf else max(0, int(n))


def _nodes_text(nodes: list[Mapping], gpus: float, cpus: float) -> str:
    """What fits where, nodes of one shape together: '2 nodes of 8 GPUs and 16 CPUs: 2 trainers each; ...'."""
    shapes: dict[tuple[float, float], int] = {}
    for node in nodes:
        key = (float(node.get("GPU", 0) or 0), float(node.get("CPU", 0) or 0))
        shapes[key] = shapes.get(key, 0) + 1
    parts = []
    for (g, c), k in sorted(shapes.items(), reverse=True):
        each = fits_on_node({"GPU": g, "CPU": c}, gpus, cpus)
        parts.append(f"{k} node{'s' if k > 1 else ''} of {g:g} GPUs and {c:g} CPUs: {each} trainer{'s' if each != 1 else ''}"
                     f"{' each' if k > 1 else ''}")
    return "; ".join(parts) or "no alive node"


def plan(config: RunConfig, resources) -> Plan:
    """Trainers and their resources from the flags and what the cluster's nodes have; contradictions are errors.

    `resources`: each alive node's total resources ({"CPU": .., "GPU": .., ...}, as `cluster_resources()`
    gives them), or one such dict for a single machine. Pure: no Ray. The default trainer count is what fits
    node by node (`fits_on_node`), not the cluster's totals divided by a trainer's share: a trainer that fits
    nowhere would wait forever to be placed."""
    nodes = [resources] if isinstance(resources, Mapping) else list(resources)
    total_gpus = sum(float(n.get("GPU", 0) or 0) for n in nodes)
    total_cpus = sum(float(n.get("CPU", 0) or 0) for n in nodes)
    if total_gpus > 0 and config.gpus_per_trainer > 0:
        gpus = config.gpus_per_trainer
        cpus = config.cpus_per_trainer if config.cpus_per_trainer is not None else 1.0
    else:
        if config.gpus_per_trainer > 0 and config.trainers is not None and config.gpus_per_trainer != 1.0:
            raise ConfigError(f"--gpus-per-trainer {config.gpus_per_trainer:g} was given but the cluster has no GPU; "
                              "leave it out to train on CPUs.")
        gpus = 0.0
        biggest = max((float(n.get("CPU", 0) or 0) for n in nodes), default=0.0)
        cpus = config.cpus_per_trainer if config.cpus_per_trainer is not None else min(2.0, max(1.0, biggest))
    fits = sum(fits_on_node(n, gpus, cpus) for n in nodes)
    need = f"{gpus:g} GPU{'s' if gpus != 1 else ''} and {cpus:g} CPU{'s' if cpus != 1 else ''}" if gpus else \
        f"{cpus:g} CPU{'s' if cpus != 1 else ''}"
    where = _nodes_text(nodes, gpus, cpus)
    if 0 < gpus < 1:
        where += f"; a fraction of a GPU shares one GPU: {math.floor(1 / gpus + EPS)} per GPU at {gpus:g}"
    one_node = "a trainer's GPUs and CPUs must all be on one node" if gpus else "a trainer's CPUs must all be on one node"
    if fits == 0:
        raise ConfigError(f"no node of the cluster can hold one trainer of {need} ({where}): {one_node}. Lower "
                          f"{'--gpus-per-trainer or ' if gpus else ''}--cpus-per-trainer.")
    n = config.trainers if config.trainers is not None else fits
    if n > fits:
        if gpus:
            head = (f"--trainers {n} with --gpus-per-trainer {gpus:g} needs {n * gpus:g} GPUs; the cluster has "
                    f"{total_gpus:g}")
        else:
            head = f"{n} trainers x {cpus:g} CPUs each needs {n * cpus:g} CPUs; the cluster has {total_cpus:g}"
        raise ConfigError(f"{head}, and {fits} trainer{'s' if fits != 1 else ''} of {need} fit on its nodes "
                          f"({where}): {one_node}. Lower --trainers "
                          f"(at most {fits}){' or --gpus-per-trainer' if gpus else ''} or --cpus-per-trainer.")
    return Plan(trainers=n, gpus=gpus, cpus=cpus)


def start_trainers(p: Plan, target: Target, work_root: str, run_id: str, keep_files: bool, box=None) -> list:
    cls = ray.remote(TrainerActor)
    env = {"env_vars": {"AR_THREADS": str(max(1, int(p.cpus)))}}
    actors = []
    for i in range(p.trainers):
        name = f"trainer-{i}"
        actors.append(cls.options(
            name=f"ar-ray:{run_id}:{name}", num_gpus=p.gpus, num_cpus=p.cpus, max_restarts=-1, max_task_retries=0,
            max_concurrency=2,  # status() answers while run() is busy
            scheduling_strategy="SPREAD", runtime_env=env,
        ).remote(target, work_root, name, keep_files=keep_files, box=box, cpus=p.cpus))
    return actors


def start_proposers(config: RunConfig, target: Target, run_id: str, gpus: bool = False, resumed_rows: int = 0) -> list:
    """`resumed_rows`: the ledger's rows when resuming (0 for a fresh run): each resume seeds the proposers anew."""
    cls = ray.remote(ProposerActor)
    program = target.program_text()
    options = dict(config.proposer_options)
    if config.proposer == "mutate":  # it leaves alone the knobs of the hardware the trainers do not have
        options.setdefault("hardware", "gpu" if gpus else "cpu")
        options.setdefault("space", target.knobs)  # the target's [knobs]
        options.setdefault("off", target.knobs_off)
    holder = None
    if config.proposer == "llm":
        # on other nodes, workers see that node's environment, not the driver's: hand the API key over (to proposer
        # actors only), in memory through a method call: never in a runtime_env, which Ray writes to its logs
        from proposers.llm_config import key_env_vars
        keys = {v: os.environ[v] for v in key_env_vars(config.proposer_options) if v in os.environ}
        if keys:
            holder = ray.remote(KeyHolder).options(num_cpus=0, max_restarts=0).remote()
            ray.get(holder.hold.remote(keys))
    # a proposer that dies restarts; its lost call fails (max_task_retries=0) so the driver counts it and asks again
    return [cls.options(name=f"ar-ray:{run_id}:proposer-{i}", num_cpus=0, max_restarts=-1, max_task_retries=0,
                        max_concurrency=8)
            .remote(config.proposer, f"{config.proposer}-{i}", target.editable, program,
                    proposer_seed(config.seed, i, resumed_rows), options, keys=holder)
            for i in range(config.proposers)]


def cluster_resources() -> list[dict]:
    """Each alive node's total resources ({"CPU": .., "GPU": .., ...}) plus "node" (its address and id), for
    `plan`: trainers are placed node by node, so the cluster's totals are not enough to size them."""
    return [{**(n.get("Resources") or {}), "node": f"{n.get('NodeManagerAddress', '?')} {str(n.get('NodeID', ''))[:8]}"}
            for n in ray.nodes() if n.get("Alive")]


STARTUP_TIMEOUT = 120.0  # seconds for every trainer and proposer actor to be placed and constructed


class StartupError(ConfigError):
    """Trainer or proposer actors that did not start in time (usually: Ray cannot place them)."""


def wait_started(trainers: list, proposers: list = (), timeout: float | None = None, p: Plan | None = None) -> None:
    """Wait until every trainer answers ping() and every proposer baseline_version(): both wait only for the actor
    to be placed on a node, its worker to start (with the shipped code) and its constructor to run; the target's
    setup command runs later, in the first experiment. An actor that died raises its error; one still not up after
    `timeout` seconds (STARTUP_TIMEOUT) is a StartupError naming it, instead of a silent wait forever."""
    timeout = STARTUP_TIMEOUT if timeout is None else timeout
    names = {}
    for i, t in enumerate(trainers):
        names[t.ping.remote()] = f"trainer-{i}"
    for i, q in enumerate(proposers):
        names[q.baseline_version.remote()] = f"proposer-{i}"
    if not names:
        return
    deadline, late = time.monotonic() + timeout, list(names)
    while late and (left := deadline - time.monotonic()) > 0:
        ready, late = ray.wait(late, num_returns=1, timeout=left)
        ray.get(ready)  # an actor whose constructor failed raises here, at once
    if not late:
        return
    late_names = [names[r] for r in late]
    need = ""
    if p is not None:
        cpus = f"{p.cpus:g} CPU{'s' if p.cpus != 1 else ''}"
        need = (f" (each trainer asks for {p.gpus:g} GPU{'s' if p.gpus != 1 else ''} and {cpus} on one node)" if p.gpus
                else f" (each trainer asks for {cpus})")
    raise StartupError(
        f"{len(late_names)} of {len(names)} actors did not start within {timeout:g} s: {', '.join(late_names)}{need}. "
        "Usually Ray cannot place them: another job or run on this cluster holds the GPUs or CPUs they need, a node "
        "left the cluster after the trainers were counted, or a node's resources are not what Ray reports; it can "
        "also be a slow worker start (shipping the code to a new node). See `ray status` for what is free, and lower "
        "--trainers or the per-trainer resources.")

