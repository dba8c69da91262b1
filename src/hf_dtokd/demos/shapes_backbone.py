"""A pretrained backbone for the detection demo's students, as real students start from a pretrained one.

Trained from random weights on a few hundred images, the demo's RT-DETR students disagree by tens of mAP from
one seed to the next (the pilots in the detection docs). A real student starts from a backbone pretrained on
other, larger data, so that only its head starts at random. This module gives the demo's students one: a
detector of the students' shape is trained with the plain ``Trainer`` on generated images of a generator seed
that no detection split uses, **class-agnostic** (every shape is one class, "shape": the backbone learns
where objects are, not which of the demo's classes they are, which the students still learn from their
labels or their teacher), and its ResNet is saved with ``save_pretrained`` to a folder that
``build_detector`` reads as it reads a Hub backbone (its weights copied into each student, checked to find
their place). It is cached beside the teacher and reused while its settings are unchanged.

(A first attempt pretrained a ResNet classifier to tell which shape classes an image holds: at this width it
memorised its images and stayed at chance on held-out ones, so the objectness task replaced it.)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Sequence
from transformers import PrinterCallback, ResNetConfig, Trainer, TrainingArguments

from hf_dtokd.data import generate_shapes
from hf_dtokd.tasks.detection.inputs import DetectionTransform, collate_detection
from hf_dtokd.tasks.detection.metrics import DetectionMetrics

#: generator seeds of the pretraining images and of their held-out check (the detection splits use 0, 10_000
#: and 20_000): the backbone never sees a detection image
PRETRAIN_SEED = 30_000
HELD_OUT_SEED = 40_000
HELD_OUT_IMAGES = 200
#: the one class of the pretraining task
OBJECTNESS = {0: "shape"}


def resnet_config(width: int) -> ResNetConfig:
    """The demo's small ResNet: four basic stages of widths ``w, w, 2w, 2w``, one block each."""
    return ResNetConfig(
        embedding_size=width,
        hidden_sizes=[width, width, 2 * width, 2 * width],
        depths=[1, 1, 1, 1],
        layer_type="basic",
    )


def detector_training_args(
    output_dir: Path,
    batch_size: int,
    steps: int,
    learning_rate: float,
    seed: int,
    data_seed: int | None,
    logging_steps: int = 500,
) -> dict[str, Any]:
    """The demos' detector recipe (TrainingArguments fields), shared by the backbone's pretraining, the teacher
    and the students: AdamW with a 5 % warm-up then a cosine decay, weight decay 1e-4, gradients clipped at 1,
    on CPU, no checkpoints; ``seed`` fixes the initialisation's random stream, ``data_seed`` the data order (None: the
    Trainer's default, which the backbone's pretraining keeps so that a cached backbone is trained again alike)."""
    return dict(
        output_dir=str(output_dir),
        use_cpu=True,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=50,
        max_steps=steps,
        learning_rate=learning_rate,
        warmup_steps=int(0.05 * steps),
        lr_scheduler_type="cosine",
        weight_decay=1e-4,
        max_grad_norm=1.0,
        logging_steps=logging_steps,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=seed,
        data_seed=data_seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        eval_do_concat_batches=False,
    )


def class_agnostic_shapes(
    num_images: int, image_size: int, max_objects: int, seed: int, first_id: int
) -> Any:
    """Generated detection rows whose every object has class 0 ("shape")."""
    rows = generate_shapes(num_images, image_size, max_objects, seed, first_id)
    features = rows.features.copy()
    features["objects"]["category"] = Sequence(ClassLabel(names=list(OBJECTNESS.values())))
    return rows.map(
        lambda row: {"objects": {**row["objects"], "category": [0] * len(row["objects"]["category"])}},
        features=features,
    )


def pretrain_backbone(
    folder: Path,
    build_detector: Callable[[dict[int, str]], Any],
    processor: Any,
    settings: dict[str, Any],
    num_images: int,
    steps: int,
    batch_size: int = 16,
    learning_rate: float = 2e-3,
) -> dict[str, Any]:
    """Train (or reuse) the backbone in ``folder``: ``build_detector(id2label)`` is trained class-agnostic,
    then its backbone saved. ``settings`` (the detector's shape, the images' size...) key the cache with the
    arguments. Returns the held-out class-agnostic mAP and the training time."""
    image_size = processor.size["height"]
    settings = {
        **settings,
        "image_size": image_size,
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
    transform = DetectionTransform(processor, len(OBJECTNESS))
    max_objects = settings["max_objects"]
    train = class_agnostic_shapes(num_images, image_size, max_objects, PRETRAIN_SEED, 0)
    held_out = class_agnostic_shapes(HELD_OUT_IMAGES, image_size, max_objects, HELD_OUT_SEED, num_images)
    detector = build_detector(OBJECTNESS)
    args = TrainingArguments(
        **detector_training_args(folder / "run", batch_size, steps, learning_rate, seed=0, data_seed=None)
    )
    trainer = Trainer(
        model=detector,
        args=args,
        train_dataset=train.with_transform(transform),
        eval_dataset=held_out.with_transform(transform),
        data_collator=collate_detection,
        compute_metrics=DetectionMetrics(processor, OBJECTNESS),
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    metrics = trainer.evaluate()
    result = {"objectness_map": metrics["eval_map"], "train_seconds": time.perf_counter() - start}
    detector.model.backbone.model.save_pretrained(folder)  # the ResNet alone (transformers' backbone class)
    marker.write_text(json.dumps({"settings": settings, "result": result}))
    return {"folder": str(folder), "cached": False, **result}
