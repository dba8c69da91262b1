"""A pretrained backbone for the detection demo's students, as real students start from an ImageNet backbone.

Trained from random weights on a few hundred images, the demo's RT-DETR students disagree by tens of mAP from
one seed to the next (the pilots in the detection docs). A real student starts from a backbone pretrained on
a large, different dataset, so that only its head starts at random. This module gives the demo's students
one: a ``ResNetForImageClassification`` of the students' backbone shape, trained with the plain ``Trainer``
to tell which shape classes an image holds (multi-label, binary cross-entropy) on generated images of a
generator seed that no detection split uses, and saved with ``save_pretrained`` to a folder that
``build_detector`` reads as it reads a Hub backbone (its weights copied into each student, checked to find
their place). It is cached beside the teacher and reused while its settings are unchanged.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    PrinterCallback,
    ResNetConfig,
    ResNetForImageClassification,
    RTDetrImageProcessor,
    Trainer,
    TrainingArguments,
)

from hf_dtokd.data import SHAPE_CLASSES, generate_shapes

#: generator seeds of the pretraining images and their held-out check (the detection splits use 0, 10_000
#: and 20_000): the backbone never sees a detection image
PRETRAIN_SEED = 30_000
HELD_OUT_SEED = 40_000
HELD_OUT_IMAGES = 500


def resnet_config(width: int, **kwargs: Any) -> ResNetConfig:
    """The demo's small ResNet: four basic stages of widths ``w, w, 2w, 2w``, one block each."""
    return ResNetConfig(
        embedding_size=width,
        hidden_sizes=[width, width, 2 * width, 2 * width],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        **kwargs,
    )


class PresenceTransform:
    """Detection rows -> ``pixel_values`` (the RT-DETR processor's) and a multi-hot ``labels`` of the classes."""

    def __init__(self, processor: RTDetrImageProcessor) -> None:
        self.processor = processor

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        pixels = self.processor(
            images=[image.convert("RGB") for image in batch["image"]], return_tensors="pt"
        )
        labels = torch.zeros(len(batch["image"]), len(SHAPE_CLASSES))
        for row, objects in enumerate(batch["objects"]):
            labels[row, objects["category"]] = 1.0
        return {"pixel_values": pixels["pixel_values"], "labels": labels}


def exact_match(eval_pred: Any) -> dict[str, float]:
    """The share of images whose every class is told right (present: logit > 0)."""
    logits, labels = eval_pred
    return {"exact_match": float(np.mean(np.all((logits > 0) == (labels > 0.5), axis=1)))}


def pretrain_backbone(
    folder: Path,
    width: int,
    image_size: int,
    max_objects: int,
    num_images: int,
    steps: int,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
) -> dict[str, Any]:
    """Train (or reuse) the backbone in ``folder``; its held-out exact-match accuracy and training time."""
    settings = {
        "width": width,
        "image_size": image_size,
        "max_objects": max_objects,
        "num_images": num_images,
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
    }
    marker = folder / "demo_settings.json"
    if (folder / "config.json").is_file() and marker.is_file():
        recorded = json.loads(marker.read_text())
        if recorded["settings"] == settings:
            return {"folder": str(folder), "cached": True, **recorded["result"]}
    start = time.perf_counter()
    processor = RTDetrImageProcessor(size={"height": image_size, "width": image_size})
    transform = PresenceTransform(processor)
    train = generate_shapes(num_images, image_size, max_objects, PRETRAIN_SEED).with_transform(transform)
    held_out = generate_shapes(HELD_OUT_IMAGES, image_size, max_objects, HELD_OUT_SEED).with_transform(
        transform
    )
    torch.manual_seed(0)
    model = ResNetForImageClassification(
        resnet_config(
            width,
            num_labels=len(SHAPE_CLASSES),
            id2label=dict(enumerate(SHAPE_CLASSES)),
            label2id={name: i for i, name in enumerate(SHAPE_CLASSES)},
            problem_type="multi_label_classification",
        )
    )
    args = TrainingArguments(
        output_dir=str(folder / "run"),
        use_cpu=True,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=100,
        max_steps=steps,
        learning_rate=learning_rate,
        warmup_steps=int(0.05 * steps),
        lr_scheduler_type="cosine",
        weight_decay=1e-4,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=train, eval_dataset=held_out, compute_metrics=exact_match
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    metrics = trainer.evaluate()
    result = {"exact_match": metrics["eval_exact_match"], "train_seconds": time.perf_counter() - start}
    model.save_pretrained(folder)
    marker.write_text(json.dumps({"settings": settings, "result": result}))
    return {"folder": str(folder), "cached": False, **result}
