"""Launched by test_distributed.py with `accelerate launch --multi_gpu --num_processes 2` on CPU (gloo).

Trains each variant for a few steps on 16 examples with a per-process batch half the single-process
one (same global batch), and writes, from rank 0, the world size, the logged pi, every rank's pi and
every rank's final parameters.
"""

import json
import sys

import torch

from hf_dtokd import DTOKDTrainer, FeatureKDTrainer
from hf_dtokd.gradients.parameters import WindowGradients
from hf_dtokd.trainer.teacher_cache import TEACHER_LOGITS
from testing_utils import (
    conflicting_pair,
    end_process_group,
    partly_labelled,
    random_images,
    tiny_args,
    train_logs,
)

GA = {"gradient_accumulation_steps": 2}
ALL_REDUCE = WindowGradients.all_reduce_mean

#: name -> (config overrides, per-process batch here, batch of the single process it must equal)
VARIANTS = {
    "dto": ({"method": "dto"}, 8, 16),
    "dto_amortized": ({"method": "dto_amortized"}, 8, 16),
    "fixed": ({"method": "fixed"}, 8, 16),
    "dot": ({"method": "dot"}, 8, 16),
    "upgrad": ({"method": "upgrad"}, 8, 16),
    "uncertainty": ({"method": "uncertainty"}, 8, 16),
    "dto_representation": ({"method": "dto", "gradient_placement": "representation"}, 8, 16),
    "dto_amortized_next_batch": ({"method": "dto_amortized", "look_ahead": "next_batch"}, 8, 16),
    # each rank runs the teacher on its 8 rows in batches of 3, 3, 2 (so the gathered blocks must be put back
    # in row order), ends with the whole column and reads the rows its sampler gives it
    "dto_teacher_cache": ({"method": "dto", "teacher_cache": True, "per_device_eval_batch_size": 3}, 8, 16),
    # gradient accumulation with DDP: 2 processes x 2 micro-batches of 4 = 1 process x 2 micro-batches of 8
    "dto_accumulation": ({"method": "dto", **GA}, 4, 8),
    "dto_amortized_accumulation": ({"method": "dto_amortized", **GA}, 4, 8),
    "dot_accumulation": ({"method": "dot", **GA}, 4, 8),
    # 3 labelled images of 16 spread unevenly over 2 ranks x 2 micro-batches: exact window means
    "dto_unlabelled_accumulation": ({"method": "dto", "unlabelled": True, **GA}, 4, 8),
    "fixed_unlabelled_accumulation": ({"method": "fixed", "unlabelled": True, **GA}, 4, 8),
    # the student and its projectors as one DDP-wrapped module (StudentWithProjectors)
    "feature_kd_vkd": ({"method": "dto", "trainer": "features"}, 8, 16),
    "feature_kd_vkd_amortized": ({"method": "dto_amortized", "trainer": "features"}, 8, 16),
}


#: a broken run the cross-rank checks must catch: per-loss gradients used without the all-reduce
BROKEN = "dto_without_all_reduce"


def make_trainer(output_dir: str, overrides: dict, batch: int) -> DTOKDTrainer:
    """A variant's trainer on the conflicting pair: DTOKDTrainer, or FeatureKDTrainer (VkD projector)."""
    overrides = dict(overrides)
    kind = overrides.pop("trainer", "logits")
    group_features = overrides.pop("group_features", None)
    data = random_images(16)
    if overrides.pop("unlabelled", False):
        data = partly_labelled(data, {0, 1, 2})
    student, teacher = conflicting_pair()
    settings = {"temperature": 2.0, "max_steps": 3, "per_device_train_batch_size": batch, **overrides}
    args = tiny_args(output_dir, **settings)
    if kind == "features":
        torch.manual_seed(5)  # the projector's initialisation
        return FeatureKDTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            projector="vkd",
            group_features=group_features,
            train_dataset=data,
        )
    return DTOKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data)


def main(output_dir: str) -> None:
    results = {}
    for name, (overrides, batch, _) in [*VARIANTS.items(), (BROKEN, ({"method": "dto"}, 8, 16))]:
        WindowGradients.all_reduce_mean = (lambda self, accelerator: None) if name == BROKEN else ALL_REDUCE
        trainer = make_trainer(f"{output_dir}/{name}", overrides, batch)
        trainer.train()
        params = torch.cat(
            [p.detach().reshape(-1) for p in trainer.accelerator.unwrap_model(trainer.model).parameters()]
        )
        results[name] = {
            "world_size": trainer.accelerator.num_processes,
            "pi_distill": train_logs(trainer, "pi_distill"),
            "pi_every_rank": trainer.accelerator.gather(trainer.balancer.pi.float()[None]).tolist(),
            "params": trainer.accelerator.gather(params[None]).tolist(),
        }
        if (
            trainer.args.teacher_cache
        ):  # the training barely depends on the row order: check the column itself
            column = trainer.train_dataset[:][TEACHER_LOGITS].to(trainer.accelerator.device)
            results[name]["teacher_logits_every_rank"] = trainer.accelerator.gather(column[None]).tolist()
    if torch.distributed.get_rank() == 0:
        with open(f"{output_dir}/ddp_results.json", "w") as handle:
            json.dump(results, handle)


if __name__ == "__main__":
    main(sys.argv[1])
    end_process_group()
