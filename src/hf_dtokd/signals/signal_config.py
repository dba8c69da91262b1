"""One config per signal, trl-style: each trainer's options are fields of a ``DTOKDConfig`` subclass, so that
checkpoints (``training_args.bin``), the model card and the command line all read them from one place.

``as_signal_config`` accepts a plain ``DTOKDConfig`` too (copied field by field into the signal's class)
and writes options given to the trainer as keyword arguments into the config, so that what ran is what is
recorded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hf_dtokd.losses import DEIT_DISTILLATION, SEGMENTATION_KD_TERMS
from hf_dtokd.signals.projectors import PROJECTORS
from hf_dtokd.trainer.dtokd_config import DTOKDConfig

Config = TypeVar("Config", bound=DTOKDConfig)


@dataclass
class FeatureKDConfig(DTOKDConfig):
    """[`DTOKDConfig`] plus the options of [`FeatureKDTrainer`]: feature distillation at paired stages."""

    projector: str = field(
        default="linear",
        metadata={
            "help": "Feature projector: 'linear' (DTO-KD's 1x1 map), 'vkd' (orthogonal map, teacher layer-normed, "
            "SmoothL1) or 'mokd' (MoKD-style subspace).",
            "choices": PROJECTORS,
        },
    )
    student_stages: list[int] | None = field(
        default=None,
        metadata={"help": "Student stage indices to pair with teacher_stages (default: evenly spaced)."},
    )
    teacher_stages: list[int] | None = field(
        default=None, metadata={"help": "Teacher stage indices, one per student stage."}
    )
    group_features: bool = field(
        default=True,
        metadata={
            "help": "Sum logit and feature KD into one distillation objective: DTO-KD's two objectives "
            "(distill, task), the paper's form. False (--no_group_features): three objectives (distill, "
            "feature, task), an extension the paper leaves to future work."
        },
    )

    def check_signal_options(self) -> None:
        if self.projector not in PROJECTORS:
            raise ValueError(f"unknown projector {self.projector!r}; valid values: {', '.join(PROJECTORS)}")


@dataclass
class DeiTTokenConfig(DTOKDConfig):
    """[`DTOKDConfig`] plus the option of [`DeiTTokenTrainer`]: the distillation head's loss."""

    deit_distillation: str = field(
        default="hard",
        metadata={
            "help": "Distillation-head loss: 'hard' (DeiT's default: CE on the teacher's top class) or 'soft' (KL at "
            "the temperature).",
            "choices": DEIT_DISTILLATION,
        },
    )

    def check_signal_options(self) -> None:
        if self.deit_distillation not in DEIT_DISTILLATION:
            raise ValueError(
                f"unknown DeiT distillation {self.deit_distillation!r}; valid values: {', '.join(DEIT_DISTILLATION)}"
            )


@dataclass
class DetectionKDConfig(DTOKDConfig):
    """[`DTOKDConfig`] plus the options of [`DetectionKDTrainer`]: box KD, token KD, grouping."""

    box_threshold: float = field(
        default=0.3, metadata={"help": "Teacher confidence below which a matched box does not enter box KD."}
    )
    token_projector: str | None = field(
        default=None,
        metadata={
            "help": "Add token KD (matched decoder queries) through this projector: linear, vkd, mokd."
        },
    )
    group_distillation: bool = field(
        default=True,
        metadata={
            "help": "Balance (sum of the KD terms, task): DTO-KD's two objectives, the paper's form. False "
            "(--no_group_distillation): one objective per KD term, an extension the paper leaves to future work."
        },
    )

    unlabelled_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "With DetectionKDTrainer(unlabelled_dataset=...): unlabelled images drawn per micro-batch and "
            "device, distilled alongside the labelled ones (default: per_device_train_batch_size)."
        },
    )

    def check_signal_options(self) -> None:
        if self.unlabelled_batch_size is not None and self.unlabelled_batch_size < 1:
            raise ValueError(
                f"unlabelled_batch_size must be >= 1 (or None: the train batch size), got {self.unlabelled_batch_size}"
            )
        if not 0.0 <= self.box_threshold < 1.0:
            raise ValueError(
                f"box_threshold must lie in [0, 1) (a teacher confidence), got {self.box_threshold}"
            )
        if self.token_projector is not None and self.token_projector not in PROJECTORS:
            raise ValueError(
                f"unknown token_projector {self.token_projector!r}; valid values: {', '.join(PROJECTORS)}"
            )


@dataclass
class SegmentationKDConfig(DTOKDConfig):
    """[`DTOKDConfig`] plus the options of [`SegmentationKDTrainer`]: which pixel-wise KD terms, grouped or not."""

    segmentation_kd: list[str] = field(
        default_factory=lambda: list(SEGMENTATION_KD_TERMS),
        metadata={
            "help": "Segmentation KD terms: pixel_kd (per-pixel KL at the temperature) and / or channel_kd "
            "(channel-wise distillation, CWD: each class map's spatial softmax).",
            "choices": SEGMENTATION_KD_TERMS,
        },
    )
    group_distillation: bool = field(
        default=True,
        metadata={
            "help": "Balance (sum of the KD terms, task): DTO-KD's two objectives, the paper's form. False "
            "(--no_group_distillation): one objective per KD term and the task."
        },
    )

    def check_signal_options(self) -> None:
        terms = list(self.segmentation_kd)
        unknown = [t for t in terms if t not in SEGMENTATION_KD_TERMS]
        if not terms or unknown or len(set(terms)) != len(terms):
            raise ValueError(
                f"segmentation_kd must name one or more distinct terms among {', '.join(SEGMENTATION_KD_TERMS)}, "
                f"got {terms}"
            )


def as_signal_config(args: DTOKDConfig | None, config_class: type[Config], **options: Any) -> Config:
    """``args`` as a ``config_class`` (copied when it is a plain ``DTOKDConfig``; the defaults when None), with
    the keyword options the trainer was given (those not None) written into it and checked."""
    if args is None:
        args = config_class(output_dir="trainer_output")
    if not isinstance(args, DTOKDConfig):
        raise TypeError(
            f"args must be a {config_class.__name__} (or a DTOKDConfig), got {type(args).__name__}; build it like "
            f"TrainingArguments, e.g. {config_class.__name__}(output_dir=..., method='dto')"
        )
    if not isinstance(args, config_class):
        args = config_class(**{f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init})
    for name, value in options.items():
        if value is not None:
            setattr(args, name, value)
    args.check_signal_options()
    return args
