"""Launched by test_distributed.py with `accelerate launch --multi_gpu --num_processes 2` on CPU (gloo).

Trains each method for a few steps with a per-process batch of 8 on 16 examples (global batch 16)
and writes, from rank 0, the world size, the logged pi and every rank's final parameters.
"""

import json
import sys

import torch

from hf_dtokd import DTOKDTrainer
from tiny import conflicting_pair, random_images, tiny_args, train_logs

#: name -> config overrides; each runs here on 2 processes and in the test on one
VARIANTS = {
    "dto": {"method": "dto"},
    "dto_amortized": {"method": "dto_amortized"},
    "fixed": {"method": "fixed"},
    "dot": {"method": "dot"},
    "upgrad": {"method": "upgrad"},
    "uncertainty": {"method": "uncertainty"},
    "dto_representation": {"method": "dto", "gradient_placement": "representation"},
    "dto_amortized_next_batch": {"method": "dto_amortized", "look_ahead": "next_batch"},
}


def main(output_dir: str) -> None:
    results = {}
    for name, overrides in VARIANTS.items():
        student, teacher = conflicting_pair()
        args = tiny_args(f"{output_dir}/{name}", temperature=2.0, max_steps=3, per_device_train_batch_size=8,
                         **overrides)  # fmt: skip
        trainer = DTOKDTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=random_images(16)
        )
        trainer.train()
        params = torch.cat(
            [p.detach().reshape(-1) for p in trainer.accelerator.unwrap_model(trainer.model).parameters()]
        )
        every_rank = trainer.accelerator.gather(params[None])
        results[name] = {
            "world_size": trainer.accelerator.num_processes,
            "pi_distill": train_logs(trainer, "pi_distill"),
            "params": every_rank.tolist(),
        }
    if torch.distributed.get_rank() == 0:
        with open(f"{output_dir}/ddp_results.json", "w") as handle:
            json.dump(results, handle)


if __name__ == "__main__":
    main(sys.argv[1])
