"""Distillation signals and task losses, each a named scalar computed in float32."""

from .classification import logit_kd_loss, task_cross_entropy
from .deit_token import DEIT_DISTILLATION, deit_token_losses, hard_distillation_loss

__all__ = [
    "DEIT_DISTILLATION",
    "deit_token_losses",
    "hard_distillation_loss",
    "logit_kd_loss",
    "task_cross_entropy",
]
