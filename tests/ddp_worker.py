"""Launched by test_distributed.py with `accelerate launch --multi_gpu --num_processes 2` on CPU (gloo).

Trains each method for a few steps with a per-process batch of 8 on 16 examples (global batch 16)
and writes, from rank 0, the world size, the logged pi and every rank's final parameters.
"""

import json
import sys

import torch

from hf_dtokd import DTOKDTrainer
from tiny import conflicting_pair, random_images, tiny_args, train_logs

METHODS = ("dto", "dto_amortized", "fixed", "dot", "upgrad", "uncertainty")


def main(output_dir: str) -> None:
    results = {}
    for method in METHODS:
        student, teacher = conflicting_pair()
        args = tiny_args(f"{output_dir}/{method}", method=method, temperature=2.0, max_steps=3,
                         per_device_train_batch_size=8)  # fmt: skip
        trainer = DTOKDTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=random_images(16)
        )
        trainer.train()
        params = torch.cat(
            [p.detach().reshape(-1) for p in trainer.accelerator.unwrap_model(trainer.model).parameters()]
        )
        every_rank = trainer.accelerator.gather(params[None])
        results[method] = {
            "world_size": trainer.accelerator.num_processes,
            "pi_distill": train_logs(trainer, "pi_distill"),
            "params": every_rank.tolist(),
        }
    if torch.distributed.get_rank() == 0:
        with open(f"{output_dir}/ddp_results.json", "w") as handle:
            json.dump(results, handle)


if __name__ == "__main__":
    main(sys.argv[1])
