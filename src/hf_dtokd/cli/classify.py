"""Distil an image classifier with DTO-KD: the shape of transformers' run_image_classification.py.

Installed as the console script ``hf-dtokd-classify`` (and ``hf-dtokd classify``);
``examples/train_classification.py`` runs the same code::

    hf-dtokd-classify \
        --model_name_or_path google/vit-base-patch16-224-in21k \
        --teacher_model_name_or_path microsoft/resnet-50 \
        --dataset_name beans --output_dir vit-beans-dtokd --method dto \
        --do_train --do_eval --max_steps 2000 --push_to_hub

``--signal features --projector vkd`` distils stage features through projectors (FeatureKDTrainer),
``--signal deit_token`` trains a two-head DeiT student (DeiTTokenTrainer).

Without --dataset_name it uses the embedded digits data set (no download). Every model, data and
DTOKDConfig field is a flag (``--help``); a single JSON file with the same keys works as the only
argument (``hf-dtokd-classify run.json``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from datasets import DatasetDict, load_dataset
from transformers import DefaultDataCollator, HfArgumentParser

from ..config import DTOKDConfig
from ..data import load_digits_splits, preprocess_images
from ..deit_token import DeiTTokenTrainer
from ..feature_kd import FeatureKDTrainer
from ..losses import DEIT_DISTILLATION
from ..modeling import load_image_classifier, load_image_processor
from ..projectors import PROJECTORS
from ..trainer import DTOKDTrainer
from .common import parse_script_args, train_evaluate_publish

SIGNALS = ("logits", "features", "deit_token")

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={"help": "Student: Hub id (transformers or timm/...) or local folder."}
    )
    ignore_mismatched_sizes: bool = field(
        default=True, metadata={"help": "Replace the student's classifier when its label count differs."}
    )
    signal: str = field(
        default="logits",
        metadata={
            "help": "Distillation signal: 'logits' (DTOKDTrainer), 'features' (FeatureKDTrainer: projectors at "
            "paired stages) or 'deit_token' (DeiTTokenTrainer: a two-head DeiT student).",
            "choices": SIGNALS,
        },
    )
    projector: str = field(
        default="linear", metadata={"help": "signal=features: the projector.", "choices": PROJECTORS}
    )
    student_stages: list[int] | None = field(
        default=None, metadata={"help": "signal=features: student stage indices (default: evenly spaced)."}
    )
    teacher_stages: list[int] | None = field(
        default=None, metadata={"help": "signal=features: teacher stage indices, one per student stage."}
    )
    group_features: bool = field(
        default=False, metadata={"help": "signal=features: fold feature KD into the distillation objective."}
    )
    deit_distillation: str = field(
        default="hard",
        metadata={
            "help": "signal=deit_token: hard or soft distillation head loss.",
            "choices": DEIT_DISTILLATION,
        },
    )

    def __post_init__(self) -> None:
        if self.signal not in SIGNALS:
            raise ValueError(f"unknown signal {self.signal!r}; valid values: {', '.join(SIGNALS)}")
        if self.signal != "features" and (
            self.student_stages or self.teacher_stages or self.group_features or self.projector != "linear"
        ):
            raise ValueError(
                "--projector, --student_stages, --teacher_stages and --group_features apply to --signal features; "
                f"drop them or set --signal features (got --signal {self.signal})"
            )
        if self.signal != "deit_token" and self.deit_distillation != "hard":
            raise ValueError("--deit_distillation applies to --signal deit_token")


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A datasets Hub id or local folder; default: the embedded digits data set."},
    )
    image_column_name: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding the class indices."})
    train_split: str = field(default="train", metadata={"help": "Split used for training."})
    eval_split: str = field(
        default="test", metadata={"help": "Split used for evaluation ('validation', 'test'...)."}
    )


def load_splits(data: DataArguments) -> DatasetDict:
    if data.dataset_name is None:
        return load_digits_splits()
    splits = load_dataset(data.dataset_name)
    for split in (data.train_split, data.eval_split):
        if split not in splits:
            raise ValueError(
                f"{data.dataset_name} has no split {split!r} (splits: {list(splits)}); set --train_split / --eval_split"
            )
    missing = {data.image_column_name, data.label_column_name} - set(splits[data.train_split].column_names)
    if missing:
        raise ValueError(
            f"{data.dataset_name} has no column(s) {sorted(missing)} (columns: {splits[data.train_split].column_names}); "
            "set --image_column_name / --label_column_name"
        )
    return splits.rename_columns({data.image_column_name: "image", data.label_column_name: "label"})


def build_trainer(model_args: ModelArguments, **kwargs: Any) -> DTOKDTrainer:
    """The trainer of the chosen signal: logit KD, feature KD through projectors, or DeiT's token."""
    if model_args.signal == "features":
        return FeatureKDTrainer(
            projector=model_args.projector, student_stages=model_args.student_stages,
            teacher_stages=model_args.teacher_stages, group_features=model_args.group_features, **kwargs,
        )  # fmt: skip
    if model_args.signal == "deit_token":
        return DeiTTokenTrainer(distillation=model_args.deit_distillation, **kwargs)
    return DTOKDTrainer(**kwargs)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, DTOKDConfig),
        prog="hf-dtokd-classify",
        description="Distil an image classifier (student) from a teacher with DTO-KD or a baseline trade-off. "
        "Model and data flags first, then every DTOKDConfig / TrainingArguments field. A single JSON file with "
        "the same keys may replace all flags.",
    )
    model_args, data_args, config = parse_script_args(parser, argv)

    splits = load_splits(data_args)
    labels = splits[data_args.train_split].features["label"].names
    student = load_image_classifier(
        model_args.model_name_or_path, "student", num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
    )  # fmt: skip
    processor = load_image_processor(model_args.model_name_or_path)
    if processor is None:
        raise ValueError(
            f"{model_args.model_name_or_path} has no image processor; save one beside the student"
        )
    train = preprocess_images(splits[data_args.train_split], processor)
    evaluation = preprocess_images(splits[data_args.eval_split], processor)

    trainer = build_trainer(
        model_args, model=student, args=config, train_dataset=train if config.do_train else None,
        eval_dataset=evaluation if config.do_eval else None, processing_class=processor,
        data_collator=DefaultDataCollator(),
    )  # fmt: skip
    card = {
        "finetuned_from": model_args.model_name_or_path,
        "tasks": "image-classification",
        "dataset": data_args.dataset_name or "sklearn digits",
        "tags": ["image-classification", "knowledge-distillation", "dto-kd"],
    }
    return train_evaluate_publish(trainer, config, card)


if __name__ == "__main__":
    main()
