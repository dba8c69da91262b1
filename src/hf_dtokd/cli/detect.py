"""Distil an object detector with DTO-KD: the shape of transformers' run_object_detection.py.

Installed as ``hf-dtokd-detect`` (and ``hf-dtokd detect``); ``examples/train_detection.py`` runs the
same code::

    hf-dtokd-detect \
        --model_name_or_path PekingU/rtdetr_r18vd --teacher_model_name_or_path PekingU/rtdetr_r50vd \
        --dataset_name cppe-5 --output_dir rtdetr-r18-cppe5-dtokd --method dto \
        --do_train --do_eval --max_steps 5000 --remove_unused_columns false --push_to_hub

    # a student assembled from a backbone and a fresh head (the paper's Swin + light head)
    hf-dtokd-detect --student_head deformable_detr --student_backbone microsoft/swin-tiny-patch4-window7-224 \
        --teacher_model_name_or_path SenseTime/deformable-detr ...

With --unlabelled_split the images of that split (labels unread) are distilled too, a batch of them per
micro-batch. Without --dataset_name it uses the generated shapes (no download). The dataset must follow the Hub's
detection layout (``image``, ``image_id``, ``objects`` with COCO ``bbox`` and ``category``), as
run_object_detection.py expects. Every model, data and DTOKDConfig field is a flag (``--help``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from datasets import DatasetDict, load_dataset
from transformers import HfArgumentParser

from hf_dtokd.cli.common import parse_script_args, train_evaluate_publish
from hf_dtokd.data import load_shapes_splits
from hf_dtokd.models.classification import load_image_processor
from hf_dtokd.signals.signal_config import DetectionKDConfig
from hf_dtokd.tasks.detection.inputs import DetectionTransform
from hf_dtokd.tasks.detection.models import (
    DETECTION_HEADS,
    build_detector,
    detection_processor,
    load_object_detector,
)
from hf_dtokd.tasks.detection.trainer import DetectionKDTrainer
from hf_dtokd.tasks.detection.unlabelled import UnlabelledImageTransform

logger = logging.getLogger(__name__)


@dataclass
class DetectionModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Student detector: Hub id or local folder (its head is resized to the labels)."},
    )
    student_head: str | None = field(
        default=None, metadata={"help": f"Or assemble the student: a fresh head among {DETECTION_HEADS} ..."}
    )
    student_backbone: str | None = field(
        default=None,
        metadata={"help": "... on this backbone (Hub id / folder of a transformers or timm/ model)."},
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "Square size the processors resize to. Default: a Hub / folder student's processor keeps its "
            "own size; an assembled student uses 640, or 64 on the generated shapes (their image size)."
        },
    )

    def __post_init__(self) -> None:
        assembled = self.student_head is not None or self.student_backbone is not None
        if (self.model_name_or_path is None) == (not assembled) or (
            assembled and (self.student_head is None or self.student_backbone is None)
        ):
            raise ValueError(
                "give the student either as --model_name_or_path, or as --student_head with --student_backbone"
            )


@dataclass
class DetectionDataArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A datasets Hub id / folder in the detection layout; default: generated shapes."},
    )
    train_split: str = field(default="train", metadata={"help": "Split used for training."})
    eval_split: str = field(default="validation", metadata={"help": "Split used for evaluation."})
    unlabelled_split: str | None = field(
        default=None,
        metadata={
            "help": "A split whose images are distilled without their labels (DetectionKDTrainer's "
            "unlabelled_dataset; its 'image' column is read), e.g. the teacher's extra images; default: none."
        },
    )
    unlabelled_dataset_name: str | None = field(
        default=None,
        metadata={"help": "The dataset of --unlabelled_split, if not --dataset_name (Hub id / folder)."},
    )


def load_detection_splits(data: DetectionDataArguments, image_size: int) -> DatasetDict:
    if data.dataset_name is None:
        return load_shapes_splits(image_size=image_size)
    splits = load_dataset(data.dataset_name)
    for split in (data.train_split, data.eval_split):
        if split not in splits:
            raise ValueError(
                f"{data.dataset_name} has no split {split!r} (splits: {list(splits)}); set --train_split / --eval_split"
            )
    missing = {"image", "image_id", "objects"} - set(splits[data.train_split].column_names)
    if missing:
        raise ValueError(
            f"{data.dataset_name} lacks the detection columns {sorted(missing)} (columns: "
            f"{splits[data.train_split].column_names}); rename them to the Hub's detection layout"
        )
    return splits


def load_unlabelled_images(data: DetectionDataArguments, splits: DatasetDict) -> Any | None:
    """The ``--unlabelled_split`` images (of ``--unlabelled_dataset_name`` or the training dataset), or None."""
    if data.unlabelled_split is None:
        if data.unlabelled_dataset_name is not None:
            raise ValueError(
                "--unlabelled_dataset_name needs --unlabelled_split (which of its splits to read)"
            )
        return None
    source = splits if data.unlabelled_dataset_name is None else load_dataset(data.unlabelled_dataset_name)
    name = data.unlabelled_dataset_name or data.dataset_name or "the generated shapes"
    if data.unlabelled_split not in source:
        raise ValueError(
            f"{name} has no split {data.unlabelled_split!r} (splits: {list(source)}); set --unlabelled_split"
        )
    images = source[data.unlabelled_split]
    if "image" not in images.column_names:
        raise ValueError(
            f"{name}'s split {data.unlabelled_split!r} has no 'image' column (columns: {images.column_names})"
        )
    return images.select_columns(["image"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = HfArgumentParser(
        (DetectionModelArguments, DetectionDataArguments, DetectionKDConfig),
        prog="hf-dtokd-detect",
        description="Distil an object detector (DETR family) from a teacher detector with DTO-KD or a baseline.",
    )
    model_args, data_args, config = parse_script_args(parser, argv)

    generated = data_args.dataset_name is None
    splits = load_detection_splits(data_args, model_args.image_size or 64)
    names = splits[data_args.train_split].features["objects"]["category"].feature.names
    id2label = dict(enumerate(names))
    if model_args.model_name_or_path is not None:
        student = load_object_detector(
            model_args.model_name_or_path,
            "student",
            id2label=id2label,
            label2id={n: i for i, n in id2label.items()},
            ignore_mismatched_sizes=True,
        )
        processor = load_image_processor(model_args.model_name_or_path)
        if processor is None:
            raise ValueError(
                f"{model_args.model_name_or_path} has no image processor; save one beside the student"
            )
        if model_args.image_size is not None or generated:
            side = model_args.image_size or 64
            processor.size = {"height": side, "width": side}
    else:
        student = build_detector(model_args.student_head, model_args.student_backbone, id2label)
        side = model_args.image_size or (64 if generated else 640)
        processor = detection_processor(model_args.student_head, side)
    transform = DetectionTransform(processor, len(names))
    unlabelled = load_unlabelled_images(data_args, splits) if config.do_train else None
    trainer = DetectionKDTrainer(
        model=student,
        args=config,
        train_dataset=splits[data_args.train_split].with_transform(transform) if config.do_train else None,
        eval_dataset=splits[data_args.eval_split].with_transform(transform) if config.do_eval else None,
        processing_class=processor,
        unlabelled_dataset=None
        if unlabelled is None
        else unlabelled.with_transform(UnlabelledImageTransform(processor)),
    )
    card = {
        "finetuned_from": model_args.model_name_or_path or model_args.student_backbone,
        "tasks": "object-detection",
        "dataset": data_args.dataset_name or "generated shapes",
        "tags": ["object-detection", "knowledge-distillation", "dto-kd"],
    }
    return train_evaluate_publish(trainer, config, card)


if __name__ == "__main__":
    main()
