"""The trainer as a Ray actor: the plain Trainer, told which GPUs Ray gave it."""

from __future__ import annotations

import ray

from trainers.trainer import Trainer


class TrainerActor(Trainer):
    def __init__(self, target, work_root: str, name: str, **kwargs):
        super().__init__(target, work_root, name, gpu_ids=ray.get_gpu_ids(), **kwargs)
        if self.gpu_model == "gpu":  # nvidia-smi did not name it: the node's accelerator type, as Ray knows it
            from ar_ray.lab.spend import node_accelerator_type
            self.gpu_model = node_accelerator_type() or "gpu"

    def ping(self) -> str:
        return self.name
