"""Launched by test_segmentation_distributed.py (and run in one process for the reference): SegmentationKDTrainer
on 2 CPU processes (DDP, gloo) with a per-process batch of 4, or on one process with the global batch of 8.

Sequential sampling gives rank 0 images 0-3, 8-11 and rank 1 images 4-7, 12-15: the same 8 images per step as
the one-process run. The students' BatchNorm (SegFormer's decode head) is taken out: DDP does not synchronise
batch statistics, so no trainer could make it equal one process. Evaluation: 11 images, 2 per process batch (the
sampler pads the last batch with a duplicate that must be dropped). Writes the results from rank 0.
"""

import json
import sys

import torch
from torch.utils.data import SequentialSampler

from hf_dtokd import SegmentationKDTrainer
from testing_utils import (
    end_process_group,
    segformer_processor,
    segmentation_args,
    shape_masks,
    tiny_segformer,
)


class SequentialTrainer(SegmentationKDTrainer):
    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)


def student() -> torch.nn.Module:
    model = tiny_segformer(0)
    model.decode_head.batch_norm = torch.nn.Identity()
    return model


def teacher() -> torch.nn.Module:
    """A teacher whose pixel predictions are far from the student's (its classifier scaled up), so that the KD
    terms and the balancing are not at their floor, and a step's size (learning rate 0.5) that makes a wrong
    reduction show in the weights."""
    model = tiny_segformer(1, width=16)
    with torch.no_grad():
        model.decode_head.classifier.weight.mul_(25.0)
    return model


LEARNING_RATE = 0.5


def main(output_dir: str, batch: int) -> None:
    results = {}
    for method in ("dto", "dto_amortized", "fixed"):
        trainer = SequentialTrainer(
            model=student(),
            teacher_model=teacher(),
            args=segmentation_args(
                f"{output_dir}/{method}",
                method=method,
                per_device_train_batch_size=batch,
                learning_rate=LEARNING_RATE,
            ),
            train_dataset=shape_masks(16),
            processing_class=segformer_processor(),
        )
        trainer.train()
        params = torch.cat(
            [p.detach().reshape(-1) for p in trainer.accelerator.unwrap_model(trainer.model).parameters()]
        )
        results[method] = {
            "world_size": trainer.accelerator.num_processes,
            "params": trainer.accelerator.gather(params[None]).tolist(),
            "pi": [row["pi_distill"] for row in trainer.state.log_history if "pi_distill" in row],
        }
    evaluator = SegmentationKDTrainer(
        model=tiny_segformer(0),
        teacher_model=tiny_segformer(1, width=16),
        args=segmentation_args(f"{output_dir}/evaluation", per_device_eval_batch_size=2),
        eval_dataset=shape_masks(11, seed=11),
        processing_class=segformer_processor(),
    )
    results["evaluation"] = evaluator.evaluate()
    if evaluator.accelerator.is_main_process:
        with open(f"{output_dir}/segmentation_results.json", "w") as handle:
            json.dump(results, handle)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 4)
    end_process_group()
