"""Launched by test_sharded_segmentation.py through ``accelerate launch --config_file <fsdp2 / ZeRO-3 YAML>``
(2 processes): ``ddp_segmentation_worker``'s runs under FSDP2 or DeepSpeed ZeRO-3 (``sharded_harness`` first),
a per-process batch of 4. Rank 0 writes every rank's gathered parameters and pi, the teacher checks, or the
refusal a backend gave at start.
"""

from __future__ import annotations

import json
import sys

import sharded_harness
import torch
from ddp_segmentation_worker import LEARNING_RATE, SequentialTrainer, student
from ddp_segmentation_worker import teacher as make_teacher
from sharded_worker import full_parameters, is_sharded

from testing_utils import (
    end_process_group,
    segformer_processor,
    segmentation_args,
    shape_masks,
)

METHODS = ("fixed", "dto_amortized", "dto")


def run(kind: str, method: str, output_dir: str) -> dict:
    try:
        trainer = SequentialTrainer(
            model=student(),
            teacher_model=make_teacher(),
            args=segmentation_args(
                f"{output_dir}/{method}",
                method=method,
                per_device_train_batch_size=4,
                learning_rate=LEARNING_RATE,
            ),
            train_dataset=shape_masks(16),
            processing_class=segformer_processor(),
        )
        teacher = trainer.teacher
        teacher_before = full_parameters(kind, teacher)
        trainer.train()
    except ValueError as error:  # refused at start: recorded for the test
        return {"refused": str(error)}
    accelerator = trainer.accelerator
    return {
        "distributed_type": str(accelerator.distributed_type),
        "world_size": accelerator.num_processes,
        "params": accelerator.gather(full_parameters(kind, trainer.model)[None]).tolist(),
        "pi": [row["pi_distill"] for row in trainer.state.log_history if "pi_distill" in row],
        "pi_every_rank": accelerator.gather(trainer.balancer.pi.float()[None]).tolist(),
        "student_sharded": is_sharded(trainer.model),
        "teacher_sharded": is_sharded(teacher),
        "teacher_frozen": bool(torch.equal(teacher_before, full_parameters(kind, teacher)))
        and not any(p.requires_grad for p in teacher.parameters()),
    }


def main(output_dir: str) -> None:
    kind = sharded_harness.enable()
    results = {"backend": kind, **{method: run(kind, method, output_dir) for method in METHODS}}
    if torch.distributed.get_rank() == 0:
        with open(f"{output_dir}/sharded_segmentation_results.json", "w") as handle:
            json.dump(results, handle)


if __name__ == "__main__":
    main(sys.argv[1])
    end_process_group()
