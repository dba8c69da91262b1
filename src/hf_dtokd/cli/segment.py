"""Distil a semantic-segmentation model with DTO-KD: the shape of transformers' run_semantic_segmentation.py.

Installed as ``hf-dtokd-segment`` (and ``hf-dtokd segment``); ``examples/train_segmentation.py`` runs the same
code::

    hf-dtokd-segment \
        --model_name_or_path nvidia/mit-b0 --teacher_model_name_or_path nvidia/segformer-b2-finetuned-ade-512-512 \
        --dataset_name scene_parse_150 --output_dir segformer-b0-ade-dtokd --method dto \
        --do_train --do_eval --max_steps 160000 --remove_unused_columns false --push_to_hub

Without --dataset_name it uses generated shapes with masks (no download). The dataset holds an image column and
a mask column (the Hub's semantic-segmentation layout: ``image`` and ``annotation`` or ``label``); the class names
come from ``--id2label_file``, the dataset repository's ``id2label.json`` (as run_semantic_segmentation.py reads
it), else the teacher's config (the student learns the teacher's classes). A student given by a backbone checkpoint (``nvidia/mit-b0``) gets a fresh head for
those classes. Every model, data and DTOKDConfig field is a flag (``--help``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from datasets import DatasetDict, load_dataset
from transformers import AutoConfig, AutoImageProcessor, HfArgumentParser

from hf_dtokd.cli.common import parse_script_args, train_evaluate_publish
from hf_dtokd.data import SEGMENTATION_CLASSES, load_shape_mask_splits
from hf_dtokd.signals.signal_config import SegmentationKDConfig
from hf_dtokd.tasks.segmentation.inputs import SegmentationTransform
from hf_dtokd.tasks.segmentation.models import load_semantic_segmenter
from hf_dtokd.tasks.segmentation.trainer import SegmentationKDTrainer

logger = logging.getLogger(__name__)


@dataclass
class SegmentationModelArguments:
    model_name_or_path: str = field(
        metadata={
            "help": "Student: Hub id or local folder of a semantic-segmentation model (or a SegFormer backbone)."
        }
    )
    image_processor_name: str | None = field(
        default=None, metadata={"help": "The student's image processor (default: the student's own)."}
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "Square size the student's processor resizes to (default: its own; 64 on the shapes)."
        },
    )


@dataclass
class SegmentationDataArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A datasets Hub id / folder with images and masks; default: generated shapes."},
    )
    train_split: str = field(default="train", metadata={"help": "Split used for training."})
    eval_split: str = field(default="validation", metadata={"help": "Split used for evaluation."})
    train_val_split: float | None = field(
        default=0.15,
        metadata={"help": "Share of the train split held out when the dataset has no eval split."},
    )
    image_column_name: str = field(default="image", metadata={"help": "The image column."})
    label_column_name: str | None = field(
        default=None, metadata={"help": "The mask column (default: 'annotation', else 'label')."}
    )
    id2label_file: str | None = field(
        default=None,
        metadata={
            "help": "JSON {id: name} of the mask classes (default: the dataset's id2label.json, or the student's)."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N evaluation rows."})
    do_reduce_labels: bool = field(
        default=False,
        metadata={
            "help": "Masks whose 0 is 'background' to skip: 0 becomes 255 (ignored), the rest shift down."
        },
    )


def load_segmentation_splits(data: SegmentationDataArguments, seed: int) -> DatasetDict:
    if data.dataset_name is None:
        return load_shape_mask_splits(image_size=64)
    splits = load_dataset(data.dataset_name)
    if data.train_split not in splits:
        raise ValueError(f"{data.dataset_name} has no split {data.train_split!r} (splits: {list(splits)})")
    if data.eval_split not in splits:
        if not data.train_val_split:
            raise ValueError(
                f"{data.dataset_name} has no split {data.eval_split!r}; set --eval_split or --train_val_split"
            )
        held_out = splits[data.train_split].train_test_split(data.train_val_split, seed=seed)
        splits = DatasetDict({data.train_split: held_out["train"], data.eval_split: held_out["test"]})
    return splits


def label_column(data: SegmentationDataArguments, columns: list[str]) -> str:
    name = data.label_column_name or ("annotation" if "annotation" in columns else "label")
    for column in (data.image_column_name, name):
        if column not in columns:
            raise ValueError(
                f"the dataset has no {column!r} column (columns: {columns}); name the image and mask columns with "
                "--image_column_name / --label_column_name"
            )
    return name


def class_names(data: SegmentationDataArguments, model_name: str, teacher_name: str | None) -> dict[int, str]:
    if data.dataset_name is None:
        return dict(enumerate(SEGMENTATION_CLASSES))
    if data.id2label_file is not None:
        with open(data.id2label_file, encoding="utf-8") as handle:
            return {int(k): v for k, v in json.load(handle).items()}
    try:  # as run_semantic_segmentation.py: the dataset repository's id2label.json
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(data.dataset_name, "id2label.json", repo_type="dataset")
        with open(path, encoding="utf-8") as handle:
            return {int(k): v for k, v in json.load(handle).items()}
    except Exception as error:  # noqa: BLE001 (no file, offline: fall back to the student's classes)
        logger.info("no id2label.json for %s (%s): the teacher's classes are used", data.dataset_name, error)
    # the teacher's classes (a student distilled from it predicts them), else the student's own
    config = AutoConfig.from_pretrained(teacher_name or model_name)
    return {int(k): v for k, v in config.id2label.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = HfArgumentParser(
        (SegmentationModelArguments, SegmentationDataArguments, SegmentationKDConfig),
        prog="hf-dtokd-segment",
        description="Distil a semantic-segmentation model from a teacher with DTO-KD or a baseline.",
    )
    model_args, data_args, config = parse_script_args(parser, argv)
    splits = load_segmentation_splits(data_args, config.seed)
    masks = label_column(data_args, splits[data_args.train_split].column_names)
    id2label = class_names(data_args, model_args.model_name_or_path, config.teacher_model_name_or_path)
    student = load_semantic_segmenter(
        model_args.model_name_or_path,
        "student",
        id2label=id2label,
        label2id={name: i for i, name in id2label.items()},
        ignore_mismatched_sizes=True,
    )
    processor = AutoImageProcessor.from_pretrained(
        model_args.image_processor_name or model_args.model_name_or_path,
        do_reduce_labels=data_args.do_reduce_labels,
    )
    side = model_args.image_size or (64 if data_args.dataset_name is None else None)
    if side is not None:
        processor.size = {"height": side, "width": side}
    transform = SegmentationTransform(processor, data_args.image_column_name, masks)

    def prepared(split: str, limit: int | None) -> Any:
        rows = splits[split]
        rows = rows.select(range(min(limit, len(rows)))) if limit is not None else rows
        return rows.with_transform(transform)

    trainer = SegmentationKDTrainer(
        model=student,
        args=config,
        train_dataset=prepared(data_args.train_split, data_args.max_train_samples)
        if config.do_train
        else None,
        eval_dataset=prepared(data_args.eval_split, data_args.max_eval_samples) if config.do_eval else None,
        processing_class=processor,
    )
    card = {
        "finetuned_from": model_args.model_name_or_path,
        "tasks": "image-segmentation",
        "dataset": data_args.dataset_name or "generated shapes",
        "tags": ["image-segmentation", "vision", "knowledge-distillation", "dto-kd"],
    }
    return train_evaluate_publish(trainer, config, card)


if __name__ == "__main__":
    main()
