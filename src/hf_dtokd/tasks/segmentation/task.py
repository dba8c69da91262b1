"""Semantic segmentation as a distillation task: pixel-wise and channel-wise KD and the student's cross-entropy.

Objectives (``losses/segmentation.py``), all on per-pixel logits resampled to the label size (student and teacher
may predict at different resolutions): ``pixel_kd`` (per-pixel KL at temperature ``T``), ``channel_kd`` (CWD: each
class map's spatial softmax at ``T``), and ``task``, the student's cross-entropy with the masks, ignoring the
student config's ``semantic_loss_ignore_index`` (255 for SegFormer / ADE20K), as transformers' segmentation heads
compute it. Grouped (the default, the paper's two objectives) the KD terms are summed into ``distill``.

The task loss is a mean over labelled pixels, the KD losses over images (pixels or channels of each image): the
window means are made exact from ``[images, labelled pixels]`` per micro-batch; an image whose pixels are all
ignored is distilled only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hf_dtokd.losses import channel_kd_loss, pixel_kd_loss, resample_logits, segmentation_cross_entropy
from hf_dtokd.models.classification import num_labels
from hf_dtokd.tasks.segmentation.inputs import check_mask_size, check_segmentation_labels
from hf_dtokd.tasks.segmentation.metrics import SegmentationMetrics
from hf_dtokd.tasks.segmentation.models import segmentation_logits
from hf_dtokd.trainer.task import TEACHER_PIXELS, DistillationTask

KD_LOSSES = {"pixel_kd": pixel_kd_loss, "channel_kd": channel_kd_loss}


class SegmentationTask(DistillationTask):
    """Pixel-wise KD, channel-wise KD and the student's cross-entropy (see the module docstring)."""

    losses_from_logits = True  # every objective reads the logits (resampled): "auto" takes them
    signal_fields = ("segmentation_kd", "group_distillation")

    def __init__(self, args: Any, id2label: dict[int, str], ignore_index: int = 255) -> None:
        super().__init__(args)
        self.terms = tuple(args.segmentation_kd)
        self.group_distillation = args.group_distillation
        self.objective_names = ("distill", "task") if self.group_distillation else (*self.terms, "task")
        self.id2label, self.ignore_index = id2label, ignore_index

    # ------------------------------------------------------------------ data
    def labels_help(self) -> str:
        return "segmentation batches need masks under 'labels': prepare the dataset with hf_dtokd.SegmentationTransform"

    def check_batch_labels(self, labels: Any) -> None:
        if labels is None:
            raise ValueError(f"the batch has no 'labels'; {self.labels_help()}")
        check_segmentation_labels(labels, num_labels(self.student), self.ignore_index, "the batch's masks")

    def split_batch(self, inputs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        student_inputs, labels = super().split_batch(inputs)
        check_mask_size(labels, student_inputs["pixel_values"])
        return student_inputs, labels

    def example_counts(self, labels: Any) -> torch.Tensor | None:
        if not isinstance(labels, torch.Tensor):
            return None
        images = labels.new_tensor(labels.shape[0], dtype=torch.float32)
        return torch.stack([images, (labels != self.ignore_index).sum().float()])

    # ------------------------------------------------------------------ teacher and losses
    def teacher_signal(self, outputs: Any) -> torch.Tensor:
        """The teacher's per-pixel logits, its classes mapped to the student's."""
        assert self.teacher is not None, "attach() first"
        return self.teacher.map_classes(segmentation_logits(outputs)).detach()

    def objective_losses(
        self, outputs: Any, teacher_signal: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        logits = segmentation_logits(outputs)
        size = tuple(labels.shape[-2:])
        student, teacher = resample_logits(logits, size), resample_logits(teacher_signal, size)
        terms = [KD_LOSSES[name](student, teacher, self.args.temperature) for name in self.terms]
        task = segmentation_cross_entropy(logits, labels, self.ignore_index)
        if self.group_distillation:
            if len(terms) > 1:  # the parts of the grouped objective, logged by name
                for name, term in zip(self.terms, terms):
                    self.record_part(f"{name}_loss", term)
            return torch.stack([sum(terms), task])
        return torch.stack([*terms, task])

    def objective_descriptions(self) -> dict[str, str]:
        temperature = self.args.temperature
        terms = {
            "pixel_kd": f"per-pixel T^2 KL(teacher || student) over the classes at T = {temperature}",
            "channel_kd": f"channel-wise distillation (CWD: KL of each class map's spatial softmax) at T = {temperature}",
        }
        task = {"task": f"pixel cross-entropy with the masks (ignore index {self.ignore_index})"}
        if self.group_distillation:
            return {"distill": " + ".join(terms[name] for name in self.terms), **task}
        return {**{name: terms[name] for name in self.terms}, **task}

    # ------------------------------------------------------------------ evaluation
    def evaluation_loss(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        """The cross-entropy, and the predicted masks (argmax at the label size) for the metrics."""
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        inputs.pop(TEACHER_PIXELS, None)
        logits = segmentation_logits(model(**inputs))
        loss = segmentation_cross_entropy(logits, labels, self.ignore_index)
        masks = resample_logits(logits, tuple(labels.shape[-2:])).argmax(1)
        return loss, {"loss": loss, "predictions": masks}

    def default_metrics(self, processing_class: Any) -> Callable[..., dict[str, float]] | None:
        return SegmentationMetrics(self.id2label, self.ignore_index)
