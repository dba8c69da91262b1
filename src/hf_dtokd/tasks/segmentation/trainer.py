"""SegmentationKDTrainer: the engine on the segmentation task (``task.py``), for semantic-segmentation models.

Student and teacher are ``AutoModelForSemanticSegmentation`` models (SegFormer, UperNet, DPT, BEiT, ...), given
as instances, Hub ids or folders; they may run at different input resolutions (the teacher's pixels are resized
and re-normalised from its image processor, or read from a ``teacher_pixel_values`` column) and predict at
different resolutions (their logits are resampled to the masks' size). Evaluation reports mIoU, per-class IoU and
pixel accuracy (``SegmentationMetrics``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from hf_dtokd.signals.signal_config import SegmentationKDConfig, as_signal_config
from hf_dtokd.tasks.segmentation.models import check_segmenter, load_semantic_segmenter
from hf_dtokd.tasks.segmentation.task import SegmentationTask
from hf_dtokd.trainer.dtokd_config import DTOKDConfig
from hf_dtokd.trainer.engine import DistillationTrainer


class SegmentationKDTrainer(DistillationTrainer):
    """Distillation of semantic-segmentation models, the objectives balanced by ``args.method``.

    Args:
        model: the student (an ``AutoModelForSemanticSegmentation`` model).
        args: a [`SegmentationKDConfig`] (or a ``DTOKDConfig``, copied into one).
        teacher_model: a segmentation model instance, Hub id or folder; defaults to
            ``args.teacher_model_name_or_path``.
        segmentation_kd: the KD terms, among ``pixel_kd`` and ``channel_kd`` (default: both).
        group_distillation: balance ``(sum of the KD terms, task)`` (the default) or, False, one objective per
            KD term and the task.
        **kwargs: as for [`DTOKDTrainer`]; ``compute_metrics`` defaults to ``SegmentationMetrics``.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        args: DTOKDConfig | None = None,
        teacher_model: nn.Module | str | None = None,
        segmentation_kd: Sequence[str] | None = None,
        group_distillation: bool | None = None,
        teacher_processing_class: Any | None = None,
        **kwargs: Any,
    ) -> None:
        if model is None:
            raise ValueError("SegmentationKDTrainer needs the student segmentation model (model=...)")
        args = as_signal_config(
            args,
            SegmentationKDConfig,
            segmentation_kd=None if segmentation_kd is None else list(segmentation_kd),
            group_distillation=group_distillation,
        )
        check_segmenter(model, "student")
        if isinstance(teacher_model, nn.Module):
            check_segmenter(teacher_model, "teacher")
        config = model.config
        task = SegmentationTask(
            args, dict(config.id2label), int(getattr(config, "semantic_loss_ignore_index", 255))
        )
        super().__init__(
            model=model,
            args=args,
            task=task,
            teacher_model=teacher_model,
            teacher_loader=load_semantic_segmenter,
            teacher_processing_class=teacher_processing_class,
            **kwargs,
        )
