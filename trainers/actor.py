"""The trainer as a Ray actor: the plain Trainer, told which GPUs Ray gave it."""

from __future__ import annotations

import ray

from trainers.trainer import Trainer


class TrainerActor(Trainer):
    def __init__(self, target, work_root: str, name: str, **kwargs):
        super().__init__(target, work_root, name, gpu_ids=ray.get_gpu_ids(), **kwargs)

    def ping(self) -> str:
        return self.name
