"""Joining Ray and placing the actors: how many trainers, with which resources."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import ray

from ar_ray.config import ConfigError, RunConfig
from ar_ray.target import Target
from proposers.actor import ProposerActor
from trainers.actor import TrainerActor


NAMESPACE = "ar-ray"  # runs on one cluster share named actors here, e.g. an LLM endpoint's rate limiter


@dataclass(frozen=True)
class Plan:
    trainers: int
    gpus: float  # per trainer
    cpus: float  # per trainer


def connect(address: str | None, ship_code: bool = True) -> bool:
    """Start an embedded local Ray (address None) or join a cluster. Returns True if we started it.

    Joining a cluster ships this driver's packages to every node (ar_ray.shipping) unless ship_code is False
    (the package is then installed on each node, e.g. by cluster.yaml's setup commands)."""
    if ray.is_initialized():
        return False
    if address is None:
        ray.init("local", include_dashboard=False, log_to_driver=False, configure_logging=False, namespace=NAMESPACE)
        return True
    from ar_ray.shipping import package_runtime_env
    try:
        ray.init(address=address, log_to_driver=False, namespace=NAMESPACE,
                 runtime_env=package_runtime_env() if ship_code else None)
    except ConnectionError as e:
        raise ConfigError(f"cannot join the Ray cluster at {address!r}: {e}. Is it running? Start it with "
                          "`ray start --head` (or `ray up cluster.yaml`), or leave out --address to run on this "
                          "machine. If its log above says InvalidAuthToken, this machine lacks the cluster's token: "
                          "copy it to ~/.ray/auth_token, or set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH.") from None
    return False


def plan(config: RunConfig, resources: dict) -> Plan:
    """Trainers and their resources from the flags and what the cluster has; contradictions are errors."""
    total_gpus = resources.get("GPU", 0.0)
    total_cpus = resources.get("CPU", 0.0)
    if total_gpus > 0 and config.gpus_per_trainer > 0:
        gpus = config.gpus_per_trainer
        cpus = config.cpus_per_trainer if config.cpus_per_trainer is not None else 1.0
        fits = math.floor(total_gpus / gpus + 1e-9)
        n = config.trainers if config.trainers is not None else fits
        if n * gpus > total_gpus + 1e-9:
            raise ConfigError(f"--trainers {n} with --gpus-per-trainer {gpus:g} needs {n * gpus:g} GPUs; the cluster has "
                              f"{total_gpus:g}. Lower --trainers (at most {fits}) or --gpus-per-trainer.")
    else:
        if config.gpus_per_trainer > 0 and config.trainers is not None and config.gpus_per_trainer != 1.0:
            raise ConfigError(f"--gpus-per-trainer {config.gpus_per_trainer:g} was given but the cluster has no GPU; "
                              "leave it out to train on CPUs.")
        gpus = 0.0
        cpus = config.cpus_per_trainer if config.cpus_per_trainer is not None else min(2.0, max(1.0, total_cpus))
        fits = max(1, math.floor(total_cpus / cpus + 1e-9))
        n = config.trainers if config.trainers is not None else fits
    if n * cpus > total_cpus + 1e-9:
        raise ConfigError(f"{n} trainers x {cpus:g} CPUs each needs {n * cpus:g} CPUs; the cluster has {total_cpus:g}. "
                          "Lower --trainers or --cpus-per-trainer.")
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


def start_proposers(config: RunConfig, target: Target, run_id: str, gpus: bool = False) -> list:
    cls = ray.remote(ProposerActor)
    program = target.program_text()
    options = dict(config.proposer_options)
    if config.proposer == "mutate":  # it leaves alone the knobs of the hardware the trainers do not have
        options.setdefault("hardware", "gpu" if gpus else "cpu")
    env = {}
    if config.proposer == "llm":
        # on other nodes, workers see that node's environment, not the driver's: hand the API key over
        # (to proposer actors only; trainers strip credentials from what candidates see)
        from proposers.llm_config import key_env_vars
        env = {v: os.environ[v] for v in key_env_vars(config.proposer_options) if v in os.environ}
    # a proposer that dies restarts; its lost call fails (max_task_retries=0) so the driver counts it and asks again
    return [cls.options(name=f"ar-ray:{run_id}:proposer-{i}", num_cpus=0, max_restarts=-1, max_task_retries=0,
                        max_concurrency=8, runtime_env={"env_vars": env} if env else None)
            .remote(config.proposer, f"{config.proposer}-{i}", target.editable, program, config.seed * 1000 + i,
                    options)
            for i in range(config.proposers)]


def cluster_resources() -> dict:
    return ray.cluster_resources()

