"""Distillation signals and task losses, each a named scalar computed in float32."""

from .classification import logit_kd_loss, task_cross_entropy

__all__ = ["logit_kd_loss", "task_cross_entropy"]
