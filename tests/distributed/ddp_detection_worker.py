"""Launched by test_detection_distributed.py: DetectionKDTrainer on 2 CPU processes (DDP, gloo).

Sequential sampling with a per-process batch of 4 gives rank 0 the images 0-3, 8-11 and rank 1 the
images 4-7, 12-15, which have no targets: the DETR loss all-reduces the box count inside, so a rank
that skipped it would hang the other. Writes every rank's parameters and pi from rank 0.
"""

import json
import sys

import torch
from torch.utils.data import SequentialSampler

from hf_dtokd import DetectionKDTrainer, DetectionTransform, UnlabelledImageTransform
from hf_dtokd.data import generate_shapes
from testing_utils import EMPTY, detection_args, end_process_group, evaluate, processor, tiny_detr


class SequentialTrainer(DetectionKDTrainer):
    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)


def training_data():
    """16 labelled images (with a per-process batch of 4, rank 1's have no targets) and 12 unlabelled ones."""
    data = generate_shapes(16, image_size=32, seed=3)
    data = data.map(lambda row, i: {"objects": EMPTY if (i // 4) % 2 else row["objects"]}, with_indices=True)
    data = data.with_transform(DetectionTransform(processor(), 3))
    unlabelled = generate_shapes(12, image_size=32, seed=5).remove_columns(["objects"])
    return data, unlabelled.with_transform(UnlabelledImageTransform(processor()))


def main(output_dir: str) -> None:
    data, unlabelled = training_data()
    results = {}
    # the third run adds token KD: the student and its projector as one DDP-wrapped module; the fourth distils
    # on unlabelled images too (a second forward of the DDP-wrapped student before the one backward)
    for name, method, projector, extra in (
        ("dto", "dto", None, None),
        ("dto_amortized", "dto_amortized", None, None),
        ("dto_token_kd", "dto", "linear", None),
        ("dto_unlabelled", "dto", None, unlabelled),
    ):
        args = detection_args(
            f"{output_dir}/{name}", method=method, max_steps=2, per_device_train_batch_size=4
        )
        trainer = SequentialTrainer(
            model=tiny_detr(0),
            teacher_model=tiny_detr(1),
            args=args,
            train_dataset=data,
            token_projector=projector,
            unlabelled_dataset=extra,
        )
        trainer.train()
        params = torch.cat(
            [p.detach().reshape(-1) for p in trainer.accelerator.unwrap_model(trainer.model).parameters()]
        )
        task = torch.tensor([row["task_loss"] for row in trainer.state.log_history if "task_loss" in row])
        results[name] = {
            "world_size": trainer.accelerator.num_processes,
            "params": trainer.accelerator.gather(params[None]).tolist(),
            "pi_every_rank": trainer.accelerator.gather(trainer.balancer.pi.float()[None]).tolist(),
            "task_loss": task.tolist(),
        }
        if extra is not None:  # the images each rank drew in its first micro-batch
            drawn = torch.tensor(trainer.unlabelled_images.indices(0))
            results[name]["drawn"] = trainer.accelerator.gather(drawn[None]).tolist()
    results["evaluation"] = evaluate(f"{output_dir}/evaluation")
    if torch.distributed.get_rank() == 0:
        with open(f"{output_dir}/ddp_detection_results.json", "w") as handle:
            json.dump(results, handle)


if __name__ == "__main__":
    main(sys.argv[1])
    end_process_group()
