"""FeatureKDTrainer: multi-scale feature distillation through projectors, as named objectives.

The Trainer optimises, wraps (DDP / FSDP), clips and checkpoints ``self.model`` only, so the
student and every projector live in one trainable module, ``StudentWithProjectors``; the frozen
teacher stays outside it (timm's ``FeatureDistillationTrainableModule`` is the model of this).
Saving and pushing write the student alone with ``save_pretrained`` (it reloads with the Auto class);
the projectors go into every checkpoint (``projectors.safetensors``), so a resumed run continues
exactly, and ``export_projectors`` writes them on request.

Objectives: ``(distill, feature, task)``: logit KD, the mean over stage pairs of the projectors'
losses (``projectors.py``), and the task CE. By default (``group_features=True``, the paper's form) they
are grouped into DTO-KD's two objectives, ``(distill + feature, task)``; ``group_features=False`` balances
the three.

The feature losses reach the student only below the stages they read, so no layer after them is
shared by all losses: ``gradient_placement="representation"`` is refused here (use "parameters").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hf_dtokd.losses import logit_kd_loss, task_cross_entropy
from hf_dtokd.models.classification import classification_logits, load_image_classifier
from hf_dtokd.signals.features import pair_stages, resample_to, stage_features
from hf_dtokd.signals.projectors import PROJECTORS, build_projector
from hf_dtokd.signals.signal_config import FeatureKDConfig, as_signal_config
from hf_dtokd.signals.student_with_projectors import (
    PROJECTORS_NAME,
    ProjectorCheckpointsMixin,
    StudentWithProjectors,
)
from hf_dtokd.tasks.classification.task import ClassificationTask
from hf_dtokd.tasks.classification.trainer import DTOKDTrainer
from hf_dtokd.trainer.dtokd_config import DTOKDConfig
from hf_dtokd.trainer.teacher import load_teacher

__all__ = ["PROJECTORS_NAME", "FeatureKDTask", "FeatureKDTrainer", "StudentWithProjectors"]


def _probe_stages(model: nn.Module, role: str) -> list[torch.Tensor]:
    """Stage maps of one dummy forward (eval mode, no grad): their channel counts size the projectors."""
    config = model.config
    size = getattr(config, "image_size", 64)
    size = size if isinstance(size, int) else size[0]
    x = torch.zeros(1, getattr(config, "num_channels", 3), size, size, device=next(model.parameters()).device)
    training = model.training
    model.eval()
    with torch.no_grad():
        maps = stage_features(model(pixel_values=x, output_hidden_states=True), role)
    model.train(training)
    return maps


class FeatureKDTask(ClassificationTask):
    """Logit KD, feature KD through the projectors at paired stages, and cross-entropy (see the module)."""

    supports_teacher_cache = False  # the objectives need the teacher's features every step
    signal_fields = ("projector", "student_stages", "teacher_stages", "group_features")
    losses_from_logits = False
    teacher_forward_kwargs = {"output_hidden_states": True}

    def __init__(
        self, args: FeatureKDConfig, projectors: nn.ModuleList, pairs: Sequence[tuple[int, int]]
    ) -> None:
        super().__init__(args)
        self.projectors, self.pairs = projectors, list(pairs)
        self.group_features = args.group_features
        self.objective_names = ("distill", "task") if args.group_features else ("distill", "feature", "task")

    def teacher_signal(self, outputs: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return super().teacher_signal(outputs), [m.detach() for m in stage_features(outputs, "teacher")]

    def feature_loss(self, student_outputs: Any, teacher_maps: list[torch.Tensor]) -> torch.Tensor:
        """Mean over stage pairs of ``projector.loss(resample(s), t)``, float32."""
        student_maps = stage_features(student_outputs, "student")
        losses = []
        for projector, (s, t) in zip(self.projectors, self.pairs):
            target = teacher_maps[t]
            losses.append(projector.loss(resample_to(student_maps[s], tuple(target.shape[-2:])), target))
        return torch.stack(losses).mean()

    def objective_descriptions(self) -> dict[str, str]:
        descriptions = super().objective_descriptions()
        feature = f"mean over stage pairs of the {self.args.projector} projector's loss"
        if self.group_features:
            descriptions["distill"] += f" + {feature}"
        else:
            descriptions["feature"] = feature
        return descriptions

    def objective_losses(self, outputs: Any, teacher_signal: Any, labels: torch.Tensor) -> torch.Tensor:
        teacher_logits, teacher_maps = teacher_signal
        logits = classification_logits(outputs)
        distill = logit_kd_loss(logits, teacher_logits, self.args.temperature)
        feature = self.feature_loss(outputs, teacher_maps)
        task = task_cross_entropy(logits, labels, self.args.label_smoothing_factor)
        if self.group_features:  # the parts of the grouped objective, logged as the task's parts are
            self.record_part("logit_kd_loss", distill)
            self.record_part("feature_loss", feature)
            return torch.stack([distill + feature, task])
        return torch.stack([distill, feature, task])


class FeatureKDTrainer(ProjectorCheckpointsMixin, DTOKDTrainer):
    """A [`DTOKDTrainer`] that adds feature distillation at paired student / teacher stages.

    Args:
        projector: ``"linear"`` (DTO-KD's 1x1 projector), ``"vkd"`` (orthogonal, teacher layer-normed,
            SmoothL1) or ``"mokd"`` (MoKD-style subspace; see ``projectors.py``).
        student_stages: student stage indices, paired one to one with ``teacher_stages`` (default:
            evenly spaced).
        teacher_stages: teacher stage indices, one per student stage.
        group_features: sum logit and feature KD into one distillation objective (two objectives; the
            default). False: three objectives (distill, feature, task).
        **kwargs: as for [`DTOKDTrainer`]; ``model`` is the student itself.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        args: DTOKDConfig | None = None,
        teacher_model: nn.Module | str | None = None,
        projector: str | None = None,
        student_stages: Sequence[int] | None = None,
        teacher_stages: Sequence[int] | None = None,
        group_features: bool | None = None,
        teacher_processing_class: Any | None = None,
        **kwargs: Any,
    ) -> None:
        if projector is not None and projector not in PROJECTORS:
            raise ValueError(f"unknown projector {projector!r}; valid values: {', '.join(PROJECTORS)}")
        if model is None or args is None:
            raise ValueError("FeatureKDTrainer needs the student (model=...) and a DTOKDConfig (args=...)")
        args = as_signal_config(
            args,
            FeatureKDConfig,
            projector=projector,
            group_features=group_features,
            student_stages=None if student_stages is None else list(student_stages),
            teacher_stages=None if teacher_stages is None else list(teacher_stages),
        )
        if args.gradient_placement == "representation":
            raise ValueError(
                "feature losses reach the student only below the stages they read, so no layer after them is "
                "shared by every loss: use gradient_placement='parameters' with FeatureKDTrainer"
            )
        teacher, teacher_processing_class = load_teacher(
            teacher_model, args, teacher_processing_class, load_image_classifier, student=model
        )
        student_maps, teacher_maps = _probe_stages(model, "student"), _probe_stages(teacher, "teacher")
        names = (f"student {type(model).__name__}", f"teacher {type(teacher).__name__}")
        pairs = pair_stages(
            len(student_maps), len(teacher_maps), args.student_stages, args.teacher_stages, names
        )
        projectors = nn.ModuleList(
            build_projector(args.projector, student_maps[s].shape[1], teacher_maps[t].shape[1])
            for s, t in pairs
        )
        self.projector_kind, self.group_features = args.projector, args.group_features
        super().__init__(
            model=StudentWithProjectors(model, projectors, pairs),
            args=args,
            teacher_model=teacher,
            teacher_processing_class=teacher_processing_class,
            task=FeatureKDTask(args, projectors, pairs),
            **kwargs,
        )
