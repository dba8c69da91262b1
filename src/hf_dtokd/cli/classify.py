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

The data flags are the upstream script's (``--dataset_name``, ``--train_dir`` / ``--validation_dir``,
``--train_val_split``, evaluation on ``validation``, carved from the training split when absent);
without a data set it uses the embedded digits (no download). ``--metric`` takes evaluate metric ids
or local evaluate modules. Every model, data and
DTOKDConfig field is a flag (``--help``); a single JSON file with the same keys works as the only
argument (``hf-dtokd-classify run.json``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from datasets import ClassLabel, DatasetDict, load_dataset
from transformers import DefaultDataCollator, HfArgumentParser

from hf_dtokd.cli.common import parse_script_args, train_evaluate_publish
from hf_dtokd.data import (
    MixupCollator,
    augmented_images,
    deit_train_transform,
    load_digits_splits,
    preprocess_images,
)
from hf_dtokd.models.classification import load_image_classifier, load_image_processor
from hf_dtokd.signals.signal_config import DeiTTokenConfig, FeatureKDConfig
from hf_dtokd.tasks.classification.deit_token import DeiTTokenTrainer
from hf_dtokd.tasks.classification.feature_kd import FeatureKDTrainer
from hf_dtokd.tasks.classification.metrics import evaluate_metrics
from hf_dtokd.tasks.classification.trainer import DTOKDTrainer
from hf_dtokd.trainer.teacher_inputs import PixelSpace

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
    train_from_scratch: bool = field(
        default=False,
        metadata={
            "help": "Take only the student's architecture from --model_name_or_path and initialise it afresh (DeiT "
            "trains its students from scratch); default: start from its weights."
        },
    )
    signal: str = field(
        default="logits",
        metadata={
            "help": "Distillation signal: 'logits' (DTOKDTrainer), 'features' (FeatureKDTrainer: projectors at "
            "paired stages) or 'deit_token' (DeiTTokenTrainer: a two-head DeiT student).",
            "choices": SIGNALS,
        },
    )

    def __post_init__(self) -> None:
        if self.signal not in SIGNALS:
            raise ValueError(f"unknown signal {self.signal!r}; valid values: {', '.join(SIGNALS)}")


@dataclass
class ClassifyConfig(FeatureKDConfig, DeiTTokenConfig):
    """The script's config: ``DTOKDConfig`` with every signal's options (each declared once, in its config)."""

    def check_signal_options(self) -> None:
        FeatureKDConfig.check_signal_options(self)
        DeiTTokenConfig.check_signal_options(self)


def check_signal_flags(signal: str, config: ClassifyConfig) -> None:
    """A signal's options given with another ``--signal`` are refused, not silently dropped."""
    features = (
        config.student_stages,
        config.teacher_stages,
        not config.group_features,
        config.projector != "linear",
    )
    if signal != "features" and any(features):
        raise ValueError(
            "--projector, --student_stages, --teacher_stages and --no_group_features apply to --signal features; "
            f"drop them or set --signal features (got --signal {signal})"
        )
    if signal != "deit_token" and config.deit_distillation != "hard":
        raise ValueError("--deit_distillation applies to --signal deit_token")


@dataclass
class DataArguments:
    """The data flags of transformers' ``run_image_classification.py``, with the embedded digits as default."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A datasets Hub id or local folder; without it and without --train_dir / --validation_dir: "
            "the embedded digits data set."
        },
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "The configuration name of the dataset (datasets' `name`)."}
    )
    train_dir: str | None = field(
        default=None, metadata={"help": "A folder of training images in class sub-folders (imagefolder)."}
    )
    validation_dir: str | None = field(
        default=None, metadata={"help": "A folder of validation images in class sub-folders (imagefolder)."}
    )
    train_val_split: float | None = field(
        default=0.15,
        metadata={
            "help": "Share of the training split carved off as validation when there is no validation split."
        },
    )
    max_train_samples: int | None = field(
        default=None,
        metadata={"help": "Keep only the first this many training examples (debugging, quick runs)."},
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first this many evaluation examples."}
    )
    image_column_name: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding the class indices."})
    train_split: str = field(default="train", metadata={"help": "Split used for training."})
    eval_split: str = field(
        default="validation",
        metadata={
            "help": "Split used for evaluation; carved from the training split (--train_val_split) if absent."
        },
    )
    augmentation: str = field(
        default="none",
        metadata={
            "help": "Training-image augmentation (timm): 'none'; 'rand_augment' (RandAugment --rand_augment_policy "
            "only, for small images); 'deit' (DeiT's whole transform: random resized crop, flip, RandAugment, "
            "random erasing). Both read the raw images on access: pass --remove_unused_columns false.",
            "choices": ["none", "rand_augment", "deit"],
        },
    )
    rand_augment_policy: str = field(
        default="rand-m9-mstd0.5-inc1", metadata={"help": "timm RandAugment policy (DeiT's by default)."}
    )
    random_erasing: float = field(
        default=0.25, metadata={"help": "--augmentation deit: random erasing probability."}
    )
    mixup_alpha: float = field(
        default=0.0, metadata={"help": "timm Mixup alpha (DeiT: 0.8); 0 with cutmix 0: none."}
    )
    cutmix_alpha: float = field(default=0.0, metadata={"help": "timm CutMix alpha (DeiT: 1.0)."})
    mixup_prob: float = field(default=1.0, metadata={"help": "Probability that a training batch is mixed."})
    mixup_label_smoothing: float = field(
        default=0.1, metadata={"help": "Label smoothing of the Mixup / CutMix soft targets (DeiT: 0.1)."}
    )
    metric: list[str] | None = field(
        default=None,
        metadata={
            "help": "evaluate metric ids or local evaluate module paths (several are combined with "
            "evaluate.combine), computed on the argmax predictions; default: the built-in top-1 / top-5 "
            "accuracy, which needs no download."
        },
    )

    def __post_init__(self) -> None:
        if self.dataset_name is not None and (self.train_dir or self.validation_dir):
            raise ValueError("pass either --dataset_name or --train_dir / --validation_dir, not both")
        if self.train_val_split is not None and not 0.0 <= self.train_val_split < 1.0:
            raise ValueError(f"--train_val_split must lie in [0, 1), got {self.train_val_split}")
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0 or not 0.0 <= self.mixup_prob <= 1.0:
            raise ValueError("--mixup_alpha and --cutmix_alpha must be >= 0 and --mixup_prob in [0, 1]")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be >= 1, got {value}")


def load_splits(data: DataArguments, seed: int = 0) -> DatasetDict:
    """The training and evaluation splits, as transformers' run_image_classification.py finds them.

    A Hub id / folder (``--dataset_name``), an imagefolder (``--train_dir`` / ``--validation_dir``), or the
    embedded digits (its held-out split as ``validation``). Without the evaluation split, ``train_val_split``
    of the training split is carved off (seeded, stratified when the labels are a ``ClassLabel``).
    """
    if data.dataset_name is not None:
        splits = load_dataset(data.dataset_name, data.dataset_config_name)
        source = data.dataset_name
    elif data.train_dir or data.validation_dir:
        files = {}
        if data.train_dir:
            files[data.train_split] = os.path.join(data.train_dir, "**")
        if data.validation_dir:
            files[data.eval_split] = os.path.join(data.validation_dir, "**")
        splits = load_dataset("imagefolder", data_files=files)
        source = "the image folders"
    else:
        digits = load_digits_splits()
        splits = DatasetDict({data.train_split: digits["train"], data.eval_split: digits["test"]})
        source = "the embedded digits"
    if data.train_split not in splits:
        raise ValueError(
            f"{source} has no split {data.train_split!r} (splits: {list(splits)}); set --train_split or --train_dir"
        )
    if data.eval_split not in splits:
        if not data.train_val_split:
            raise ValueError(
                f"{source} has no split {data.eval_split!r} (splits: {list(splits)}); set --eval_split, "
                "--validation_dir, or --train_val_split to carve one from the training split"
            )
        train = splits[data.train_split]
        stratify = (
            data.label_column_name
            if isinstance(train.features.get(data.label_column_name), ClassLabel)
            else None
        )
        carved = train.train_test_split(
            test_size=data.train_val_split, seed=seed, stratify_by_column=stratify
        )
        splits[data.train_split], splits[data.eval_split] = carved["train"], carved["test"]
    missing = {data.image_column_name, data.label_column_name} - set(splits[data.train_split].column_names)
    if missing:
        raise ValueError(
            f"{source} has no column(s) {sorted(missing)} (columns: {splits[data.train_split].column_names}); "
            "set --image_column_name / --label_column_name"
        )
    if data.image_column_name != "image" or data.label_column_name != "label":
        splits = splits.rename_columns({data.image_column_name: "image", data.label_column_name: "label"})
    for split, limit in (
        (data.train_split, data.max_train_samples),
        (data.eval_split, data.max_eval_samples),
    ):
        if limit is not None:
            splits[split] = splits[split].select(range(min(limit, len(splits[split]))))
    return splits


def training_images(dataset: Any, processor: Any, data: DataArguments, config: ClassifyConfig) -> Any:
    """The training split as the student's pixels: preprocessed once, or augmented on access (timm)."""
    if data.augmentation == "none":
        return preprocess_images(dataset, processor)
    if config.remove_unused_columns:
        raise ValueError(
            f"--augmentation {data.augmentation} transforms the raw images on access, which the Trainer's column "
            "removal would drop first: pass --remove_unused_columns false"
        )
    if data.augmentation == "deit":
        return deit_train_transform(dataset, processor, data.rand_augment_policy, data.random_erasing)
    size = PixelSpace.from_processor(processor).size
    return augmented_images(
        dataset, processor, data.rand_augment_policy, augment_size=size[0] if size else None
    )


def build_trainer(model_args: ModelArguments, **kwargs: Any) -> DTOKDTrainer:
    """The trainer of the chosen signal (its options come from the config): logit KD, feature KD through
    projectors, or DeiT's token."""
    if model_args.signal == "features":
        return FeatureKDTrainer(**kwargs)
    if model_args.signal == "deit_token":
        return DeiTTokenTrainer(**kwargs)
    return DTOKDTrainer(**kwargs)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, ClassifyConfig),
        prog="hf-dtokd-classify",
        description="Distil an image classifier (student) from a teacher with DTO-KD or a baseline trade-off. "
        "Model and data flags first, then every DTOKDConfig / TrainingArguments field. A single JSON file with "
        "the same keys may replace all flags.",
    )
    model_args, data_args, config = parse_script_args(parser, argv)
    check_signal_flags(model_args.signal, config)

    splits = load_splits(data_args, seed=config.seed)
    labels = splits[data_args.train_split].features["label"].names
    student = load_image_classifier(
        model_args.model_name_or_path,
        "student",
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        from_scratch=model_args.train_from_scratch,
    )
    processor = load_image_processor(model_args.model_name_or_path)
    if processor is None:
        raise ValueError(
            f"{model_args.model_name_or_path} has no image processor; save one beside the student"
        )
    train = training_images(splits[data_args.train_split], processor, data_args, config)
    evaluation = preprocess_images(splits[data_args.eval_split], processor)
    mixing = data_args.mixup_alpha > 0 or data_args.cutmix_alpha > 0

    trainer = build_trainer(
        model_args,
        model=student,
        args=config,
        train_dataset=train if config.do_train else None,
        eval_dataset=evaluation if config.do_eval else None,
        processing_class=processor,
        data_collator=MixupCollator(
            len(labels),
            mixup_alpha=data_args.mixup_alpha,
            cutmix_alpha=data_args.cutmix_alpha,
            label_smoothing=data_args.mixup_label_smoothing,
            prob=data_args.mixup_prob,
        )
        if mixing
        else DefaultDataCollator(),
        compute_metrics=evaluate_metrics(data_args.metric) if data_args.metric else None,
    )
    card = {
        "finetuned_from": model_args.model_name_or_path,
        "tasks": "image-classification",
        "dataset": data_args.dataset_name or ("imagefolder" if data_args.train_dir else "sklearn digits"),
        "tags": ["image-classification", "knowledge-distillation", "dto-kd"],
    }
    return train_evaluate_publish(trainer, config, card)


if __name__ == "__main__":
    main()
