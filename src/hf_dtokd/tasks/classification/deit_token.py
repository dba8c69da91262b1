"""DeiTTokenTrainer: DeiT's distillation token, balanced by DTO-KD (or any method) instead of 1/2 : 1/2.

The student is a two-head DeiT (transformers' ``DeiTForImageClassificationWithTeacher``: a class and a
distillation token, each with a linear head; its ``logits`` are the mean of the two). transformers
ships it for inference only; this trainer gives it its training losses (``losses/deit_token.py``):
the task loss on the class head, soft or hard distillation on the distillation head. Saving and
pushing write the two-head student with ``save_pretrained``; ``AutoModelForImageClassification``
reloads it as ``DeiTForImageClassificationWithTeacher`` (from ``config.architectures``).

The two losses read different tokens, so at the final layer norm (and anywhere after the last
attention) their gradients touch disjoint coordinates and their inner product is 0.
With ``gradient_placement="representation"`` the "auto" layer is therefore the *input* of the last
encoder block (the output of the one before it, or of the embeddings for a one-block student): the
last place where both tokens' losses reach the same coordinates, through the last attention.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hf_dtokd.losses import DEIT_DISTILLATION, deit_token_losses
from hf_dtokd.signals.signal_config import DeiTTokenConfig, as_signal_config
from hf_dtokd.tasks.classification.task import ClassificationTask
from hf_dtokd.tasks.classification.trainer import DTOKDTrainer
from hf_dtokd.trainer.dtokd_config import DTOKDConfig


class DeiTTokenTask(ClassificationTask):
    """The two heads' losses: the task on the class head, distillation on the distillation head."""

    losses_from_logits = False  # the objectives read the two heads, not the averaged logits
    signal_fields = ("deit_distillation",)

    def objective_descriptions(self) -> dict[str, str]:
        head = (
            "cross-entropy of the distillation head with the teacher's top class"
            if self.args.deit_distillation == "hard"
            else f"T^2 KL(teacher || distillation head) at T = {self.args.temperature}"
        )
        return {"distill": head, "task": "cross-entropy of the class head with the labels"}

    def objective_losses(
        self, outputs: Any, teacher_logits: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        return deit_token_losses(
            outputs["cls_logits"],
            outputs["distillation_logits"],
            teacher_logits,
            labels,
            self.args.deit_distillation,
            self.args.temperature,
            self.args.label_smoothing_factor,
        )

    def default_representation_layer(self, student: nn.Module) -> str | None:
        blocks = [name for name, _ in student.named_modules() if name.rsplit(".", 1)[0] == "deit.layers"]
        if not blocks:
            return None
        return blocks[-2] if len(blocks) > 1 else "deit.embeddings"


class DeiTTokenTrainer(DTOKDTrainer):
    """A [`DTOKDTrainer`] for a two-head DeiT student.

    Args:
        distillation: ``"hard"`` (DeiT's default: CE on the teacher's top class) or ``"soft"`` (KL at
            ``args.temperature``) on the distillation head.
        **kwargs: as for [`DTOKDTrainer`].
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        args: DTOKDConfig | None = None,
        *rest: Any,
        distillation: str | None = None,
        **kwargs: Any,
    ) -> None:
        if distillation is not None and distillation not in DEIT_DISTILLATION:
            raise ValueError(
                f"unknown DeiT distillation {distillation!r}; valid values: {', '.join(DEIT_DISTILLATION)}"
            )
        args = as_signal_config(args, DeiTTokenConfig, deit_distillation=distillation)
        self.deit_distillation = args.deit_distillation
        if model is not None and not hasattr(model, "distillation_classifier"):
            raise ValueError(
                f"DeiTTokenTrainer needs a two-head DeiT student (DeiTForImageClassificationWithTeacher, e.g. "
                f"AutoModelForImageClassification.from_pretrained('facebook/deit-tiny-distilled-patch16-224')); got "
                f"{type(model).__name__}. For a one-head student use DTOKDTrainer"
            )
        kwargs.setdefault("task", DeiTTokenTask(args))
        super().__init__(model, args, *rest, **kwargs)
