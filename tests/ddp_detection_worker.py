"""Launched by test_detection_distributed.py: DetectionKDTrainer on 2 CPU processes (DDP, gloo).

Sequential sampling with a per-process batch of 4 gives rank 0 the images 0-3, 8-11 and rank 1 the
images 4-7, 12-15, which have no targets: the DETR loss all-reduces the box count inside, so a rank
that skipped it would hang the other. Writes every rank's parameters and pi from rank 0.
"""

import json
import sys

import torch
from torch.utils.data import SequentialSampler

from hf_dtokd import DetectionKDTrainer, DetectionTransform
from hf_dtokd.data import generate_shapes
from test_detection_kd import detection_args, processor, tiny_detr

EMPTY = {"id": [], "area": [], "bbox": [], "category": []}


class SequentialTrainer(DetectionKDTrainer):
    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)


def oracle_detr(queries: int = 8) -> torch.nn.Module:
    """A tiny DETR whose first queries copy each image's true boxes, shifted by 0, 15 or 30 % of the box
    width and with every fourth class wrong: a deterministic mAP strictly between 0 and 1 that depends on
    exactly which images are evaluated (a padded duplicate or a lost image changes it)."""
    model = tiny_detr(0, queries=queries)
    forward = model.forward

    def oracle_forward(pixel_values, labels=None, **kwargs):
        outputs = forward(pixel_values=pixel_values, labels=labels, **kwargs)
        if labels is None:
            return outputs
        logits, boxes = outputs.logits.detach().clone(), outputs.pred_boxes.detach().clone()
        for b, target in enumerate(labels):
            for q, (box, label) in enumerate(zip(target["boxes"], target["class_labels"])):
                index = q + int(1000 * float(box[0])) % 3
                moved = box.clone()
                moved[0] = moved[0] + 0.15 * (index % 3) * moved[2]
                boxes[b, q] = moved
                wrong = (index + int(1000 * float(box[1]))) % 4 == 0
                logits[b, q, (int(label) + 1) % 3 if wrong else int(label)] += 4.0 + 0.1 * q
        outputs.logits, outputs.pred_boxes = logits, boxes
        return outputs

    model.forward = oracle_forward
    return model


def evaluation_set():
    """11 images, one in three without objects: per-image label dicts of different sizes, an uneven split."""
    data = generate_shapes(11, image_size=32, seed=5)
    data = data.map(lambda row, i: {"objects": EMPTY if i % 3 == 2 else row["objects"]}, with_indices=True)
    return data.with_transform(DetectionTransform(processor(), 3))


def evaluate(output_dir: str) -> dict:
    args = detection_args(output_dir, per_device_eval_batch_size=2)
    trainer = DetectionKDTrainer(model=oracle_detr(), teacher_model=tiny_detr(1), args=args,
                                 eval_dataset=evaluation_set(), processing_class=processor())  # fmt: skip
    return trainer.evaluate()


def main(output_dir: str) -> None:
    data = generate_shapes(16, image_size=32, seed=3)
    data = data.map(lambda row, i: {"objects": EMPTY if (i // 4) % 2 else row["objects"]}, with_indices=True)
    data = data.with_transform(DetectionTransform(processor(), 3))
    results = {}
    # the third run adds token KD: the student and its projector as one DDP-wrapped module
    for name, method, projector in (("dto", "dto", None), ("dto_amortized", "dto_amortized", None),
                                    ("dto_token_kd", "dto", "linear")):  # fmt: skip
        args = detection_args(
            f"{output_dir}/{name}", method=method, max_steps=2, per_device_train_batch_size=4
        )
        trainer = SequentialTrainer(model=tiny_detr(0), teacher_model=tiny_detr(1), args=args, train_dataset=data,
                                    token_projector=projector)  # fmt: skip
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
    results["evaluation"] = evaluate(f"{output_dir}/evaluation")
    if torch.distributed.get_rank() == 0:
        with open(f"{output_dir}/ddp_detection_results.json", "w") as handle:
            json.dump(results, handle)


if __name__ == "__main__":
    main(sys.argv[1])
