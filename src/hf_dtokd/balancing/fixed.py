"""Fixed weights (Hinton et al., 2015): ``L = alpha * L_distill + (1 - alpha) * L_task``.

``pi = (alpha, 1 - alpha)`` never changes, and the weights apply to the raw losses (no log, no
rescale), which is the baseline every balancing method is compared with.
"""

from __future__ import annotations

import torch

from .base import Balancer


class FixedWeights(Balancer):
    def __init__(self, alpha: float) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1] (the distillation weight), got {alpha}")
        self.pi = torch.tensor([alpha, 1.0 - alpha])

    def loss_weights(self, losses: torch.Tensor) -> torch.Tensor:
        return self.pi.to(losses.device)
