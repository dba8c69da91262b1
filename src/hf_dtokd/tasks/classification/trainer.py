"""DTOKDTrainer: the engine on the classification task, for image classifiers (transformers and timm).

``DTOKDTrainer(model=student, args=DTOKDConfig(...), teacher_model="org/teacher", train_dataset=...)`` distils
with logit KD and cross-entropy (``ClassificationTask``), balanced by ``args.method``. A custom objective set is a
``ClassificationTask`` subclass passed as ``task=``. Evaluation sees clean batches: a ``MixupCollator`` is swapped
for its ``base`` collator in the evaluation and test loaders.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn
from transformers import Trainer

from hf_dtokd.balancing import Balancer
from hf_dtokd.data.augmentation import MixupCollator
from hf_dtokd.models.classification import load_image_classifier
from hf_dtokd.tasks.classification.task import ClassificationTask
from hf_dtokd.trainer.dtokd_config import DTOKDConfig
from hf_dtokd.trainer.engine import DistillationTrainer


class DTOKDTrainer(DistillationTrainer):
    """Knowledge distillation for image classifiers, balanced by DTO-KD (or a baseline) every step.

    Args:
        model: the student (any ``AutoModelForImageClassification`` model, timm models included).
        args: a [`DTOKDConfig`].
        teacher_model: the teacher as a model instance, a Hub id or a local folder; defaults to
            ``args.teacher_model_name_or_path``. It is put in eval mode, frozen and placed by
            accelerate (never wrapped in DDP).
        balancer: a custom trade-off method (a ``Balancer``); defaults to ``args.method``.
        teacher_processing_class: the teacher's image processor. With the student's
            ``processing_class`` it defines how student pixels are converted for the teacher
            (resize and re-normalise). Loaded from the teacher's folder / Hub id when not given.
            A batch column ``teacher_pixel_values`` overrides the conversion.
        compute_metrics: defaults to top-1 (and top-5 with more than five classes) accuracy.
        task: the objectives (default ``ClassificationTask(args)``: logit KD and cross-entropy); a subclass
            adds or changes objectives.
        **kwargs: passed to ``transformers.Trainer``.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        args: DTOKDConfig | None = None,
        teacher_model: nn.Module | str | None = None,
        balancer: Balancer | None = None,
        teacher_processing_class: Any | None = None,
        compute_metrics: Callable[..., dict[str, float]] | None = None,
        task: ClassificationTask | None = None,
        teacher_loader: Callable[..., nn.Module] = load_image_classifier,
        **kwargs: Any,
    ) -> None:
        if args is None:
            args = DTOKDConfig(output_dir="trainer_output")
        super().__init__(
            model=model,
            args=args,
            task=task if task is not None else ClassificationTask(args),
            teacher_model=teacher_model,
            teacher_loader=teacher_loader,
            balancer=balancer,
            teacher_processing_class=teacher_processing_class,
            compute_metrics=compute_metrics,
            **kwargs,
        )

    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        """The Trainer's loader with a ``MixupCollator``'s ``base`` collator: evaluation sees clean batches."""
        with _training_only_collator_removed(self):
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset: Any) -> Any:
        with _training_only_collator_removed(self):
            return super().get_test_dataloader(test_dataset)


@contextlib.contextmanager
def _training_only_collator_removed(trainer: Trainer) -> Iterator[None]:
    """Swap a training-only collator (``MixupCollator``: it mixes images and labels) for its ``base``."""
    collator = trainer.data_collator
    if isinstance(collator, MixupCollator):
        trainer.data_collator = collator.base
    try:
        yield
    finally:
        trainer.data_collator = collator
