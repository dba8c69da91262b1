"""Image classification as a distillation task: logit KD and cross-entropy on the student's logits.

Objectives ``(distill, task)``::

    L_distill = T^2 KL(softmax(z_t / T) || softmax(z_s / T))     (losses/classification.py, every example)
    L_task    = CE(z_s, y)                                      (labelled examples only; label -100 = unlabelled)

Labels are class indices in ``[0, num_labels)`` (``-100`` marks an example that is distilled only) or soft
targets (one probability row per example, as Mixup / CutMix produce). To add an objective, subclass and
extend ``objective_names`` and ``compute_objective_losses`` (task last).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from hf_dtokd.data.augmentation import MixupCollator
from hf_dtokd.losses import IGNORE_INDEX, labelled_mask, logit_kd_loss, task_cross_entropy
from hf_dtokd.models.classification import classification_logits, num_labels
from hf_dtokd.tasks.classification.metrics import classification_metrics
from hf_dtokd.trainer.task import TEACHER_PIXELS, DistillationTask
from hf_dtokd.trainer.teacher_cache import TEACHER_LOGITS

#: the dataset columns a classification task reads its labels from
LABEL_COLUMNS = ("labels", "label")


class ClassificationTask(DistillationTask):
    """Logit KD + cross-entropy (see the module docstring)."""

    losses_from_logits = True
    supports_teacher_cache = True
    batch_columns = (TEACHER_LOGITS, *LABEL_COLUMNS)

    # ------------------------------------------------------------------ data
    def labels_help(self) -> str:
        return "the dataset needs a 'label' or 'labels' column with class indices"

    def check_dataset(self, dataset: Any, name: str) -> None:
        columns = getattr(dataset, "column_names", None)
        if columns is None:  # a torch Dataset: labels are checked batch by batch instead
            return
        column = next((c for c in LABEL_COLUMNS if c in columns), None)
        if column is None:
            raise ValueError(
                f"{name} has no 'labels' or 'label' column (columns: {columns}); add the class index column"
            )
        self.check_label_values(np.asarray(dataset[column]), f"{name} column {column!r}")

    def check_batch_labels(self, labels: Any) -> None:
        if isinstance(labels, torch.Tensor) and labels.device.type == "cpu":  # checked without a device sync
            self.check_label_values(labels.numpy(), "the batch's 'labels'")

    def check_label_values(self, values: np.ndarray, where: str) -> None:
        if values.size == 0 or self.student is None:
            return
        n = num_labels(self.student)
        if np.issubdtype(values.dtype, np.floating) and values.ndim == 2:  # soft targets (Mixup / CutMix)
            if values.shape[1] != n or (values < 0).any():
                raise ValueError(
                    f"{where} holds soft targets of shape {values.shape} for a student with num_labels={n}; "
                    f"soft targets are non-negative class probabilities, one column per class ({n})"
                )
            return
        bad = values[((values < 0) & (values != IGNORE_INDEX)) | (values >= n)]
        if bad.size:
            raise ValueError(
                f"{where} holds label {bad.flat[0]} outside [0, {n}) for a student with num_labels={n}; "
                "fix the labels or build the student with the dataset's number of classes (an unlabelled "
                f"example, distilled only, takes the label {IGNORE_INDEX})"
            )

    def example_counts(self, labels: Any) -> torch.Tensor | None:
        if not isinstance(labels, torch.Tensor):
            return None
        return torch.stack(
            [labels.new_tensor(labels.shape[0], dtype=torch.float32), labelled_mask(labels).sum().float()]
        )

    # ------------------------------------------------------------------ teacher and losses
    def teacher_signal(self, outputs: Any) -> Any:
        """The teacher's logits, mapped to the student's classes."""
        assert self.teacher is not None, "attach() first"
        return self.teacher.map_classes(classification_logits(outputs)).detach()

    def objective_losses(self, outputs: Any, teacher_signal: Any, labels: torch.Tensor) -> torch.Tensor:
        return self.compute_objective_losses(classification_logits(outputs), teacher_signal, labels)

    def compute_objective_losses(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """One float32 loss per entry of ``objective_names``: here ``(L_distill, L_task)``."""
        distill = logit_kd_loss(student_logits, teacher_logits, self.args.temperature)
        task = task_cross_entropy(student_logits, labels, self.args.label_smoothing_factor)
        return torch.stack([distill, task])

    def objective_descriptions(self) -> dict[str, str]:
        smoothing = self.args.label_smoothing_factor
        return {
            "distill": f"T^2 KL(teacher || student) on the logits at T = {self.args.temperature}",
            "task": "cross-entropy with the labels" + (f", label smoothing {smoothing}" if smoothing else ""),
        }

    # ------------------------------------------------------------------ evaluation
    def evaluation_loss(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        inputs.pop(TEACHER_PIXELS, None)
        inputs.pop(TEACHER_LOGITS, None)
        outputs = model(**inputs)
        return task_cross_entropy(
            classification_logits(outputs), labels, self.args.label_smoothing_factor
        ), outputs

    def default_metrics(self, processing_class: Any) -> Callable[..., dict[str, float]] | None:
        return classification_metrics

    def check_teacher_cache(self, data_collator: Any) -> None:
        super().check_teacher_cache(data_collator)
        if isinstance(data_collator, MixupCollator):
            raise ValueError(
                "teacher_cache=True stores the teacher's logits of each clean example, but MixupCollator mixes "
                "the images the student sees, so the cached logits would belong to other images: turn "
                "teacher_cache off with Mixup / CutMix (the teacher then sees the mixed batch)"
            )
