"""The optimizer and clipping when the trade-off method owns part of the update.

``BalancerOptimizer`` is a mixin of ``DistillationTrainer``. DOT computes the whole update itself: its optimizer
is momentum-free SGD (``p <- p - lr .grad``), built here instead of the Trainer's. Methods that clip the per-loss
gradients themselves (``handles_clipping``) report their pre-clip norm, and the Trainer's clipping is skipped.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import Trainer, TrainingArguments

logger = logging.getLogger(__name__)


class BalancerOptimizer(Trainer):
    """The optimizer and gradient clipping of methods that own (part of) the update (see the module)."""

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """DOT computes the whole update itself: its optimizer is momentum-free SGD, ``p <- p - lr .grad``."""
        if not self.balancer.owns_update or self.optimizer is not None:
            return super().create_optimizer(model) if model is not None else super().create_optimizer()
        if self.args.optim != TrainingArguments.optim:
            logger.warning(
                "method=%r replaces optim=%r with its own update rule (momentum-free SGD on the DOT direction)",
                self.args.method,
                self.args.optim,
            )
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            parameters, lr=self.args.learning_rate, momentum=0.0, weight_decay=0.0
        )
        return self.optimizer

    def _clip_grad_norm(self, model: nn.Module) -> torch.Tensor:
        """Methods that clip the per-loss gradients themselves report their pre-clip norm and skip the Trainer's."""
        if self.balancer.handles_clipping and self.balancer.last_grad_norm is not None:
            return self.balancer.last_grad_norm
        return super()._clip_grad_norm(model)
