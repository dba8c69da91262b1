"""Launched by test_sharded_detection.py (2 processes): DetectionKDTrainer with unlabelled images under DDP, FSDP2
or DeepSpeed ZeRO-3, whichever the launcher asked for.

Each micro-batch runs two forwards of the wrapped student (the labelled images with their labels, then the
unlabelled ones) before its backward, and the teacher (sharded too under FSDP2 / ZeRO-3) one forward over both
sets. Rank 0 writes, per run, the backend, every rank's gathered parameters and pi, the teacher checks, the
images each rank drew in its first micro-batch, or the refusal a backend gave at start.
"""

from __future__ import annotations

import json
import os
import sys

import sharded_harness
import torch
from ddp_detection_worker import SequentialTrainer, training_data
from sharded_worker import full_parameters, is_sharded

from testing_utils import detection_args, end_process_group, tiny_detr, train_logs

#: run name -> config overrides (AdamW with weight decay: the sharded optimizer state matters)
RUNS = {
    "fixed": {"method": "fixed"},
    "dto_amortized": {"method": "dto_amortized"},
    "dto": {"method": "dto"},
    "dto_shared": {"method": "dto", "gram_parameters": "shared"},
}
SETTINGS = {
    "max_steps": 3,
    "per_device_train_batch_size": 4,
    "optim": "adamw_torch",
    "learning_rate": 0.01,
    "weight_decay": 0.1,
}


def backend() -> str:
    """The launcher's backend: FSDP2 / DeepSpeed through the CPU harness, else DDP (``--multi_gpu``, gloo)."""
    flags = ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")
    if any(os.environ.get(flag, "false").lower() == "true" for flag in flags):
        return sharded_harness.enable()
    return "ddp"


def run(name: str, kind: str, output_dir: str, data, unlabelled) -> dict:
    args = detection_args(f"{output_dir}/{name}", **{**SETTINGS, **RUNS[name]})
    try:
        trainer = SequentialTrainer(
            model=tiny_detr(0),
            teacher_model=tiny_detr(1),
            args=args,
            train_dataset=data,
            unlabelled_dataset=unlabelled,
        )
        teacher = trainer.teacher
        teacher_before = full_parameters(kind, teacher)
        trainer.train()
    except ValueError as error:
        # refused at start (the trainer or the backend's prepare): recorded for the test
        return {"refused": str(error)}
    accelerator = trainer.accelerator
    params = full_parameters(kind, trainer.model)
    drawn = torch.tensor(trainer.unlabelled_images.indices(0))
    return {
        "distributed_type": str(accelerator.distributed_type),
        "world_size": accelerator.num_processes,
        "params": accelerator.gather(params[None]).tolist(),
        "pi_distill": train_logs(trainer, "pi_distill"),
        "pi_every_rank": accelerator.gather(trainer.balancer.pi.float()[None]).tolist(),
        "task_loss": train_logs(trainer, "task_loss"),
        "drawn": accelerator.gather(drawn[None]).tolist(),
        "student_sharded": is_sharded(trainer.model),
        "teacher_sharded": is_sharded(teacher),
        "teacher_frozen": bool(torch.equal(teacher_before, full_parameters(kind, teacher)))
        and not any(p.requires_grad for p in teacher.parameters()),
    }


def main(output_dir: str) -> None:
    kind = backend()
    # rank 1's labelled images have no targets (per-process batch 4, sequential): the DETR loss all-reduces the box
    # count inside, so a rank that skipped it would hang the other
    data, unlabelled = training_data()
    results = {"backend": kind, **{name: run(name, kind, output_dir, data, unlabelled) for name in RUNS}}
    if torch.distributed.get_rank() == 0:
        with open(f"{output_dir}/sharded_detection_results.json", "w") as handle:
            json.dump(results, handle)


if __name__ == "__main__":
    main(sys.argv[1])
    end_process_group()
