"""Fixed weights (Hinton et al., 2015): ``L = alpha * L_distill + (1 - alpha) * L_task``.

``pi = (alpha, 1 - alpha)`` never changes, and the weights apply to the raw losses (no log, no
rescale), which is the baseline every balancing method is compared with. For ``K`` objectives,
``FixedWeights(weights=[...])`` takes one non-negative weight per objective.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from hf_dtokd.balancing.base import Balancer, check_two_objectives


class FixedWeights(Balancer):
    config_fields = ("temperature", "alpha")
    #: alpha applies to every window; without labels the task loss is 0 and alpha weighs distillation alone
    balances_each_window = False

    @classmethod
    def from_config(cls, config: Any, num_objectives: int, **options: Any) -> FixedWeights:
        check_two_objectives(config.method, num_objectives)
        return cls(alpha=config.alpha, **options)

    def __init__(self, alpha: float | None = None, weights: Sequence[float] | None = None) -> None:
        if (alpha is None) == (weights is None):
            raise ValueError(
                "FixedWeights takes either alpha (two objectives) or weights (one per objective)"
            )
        if alpha is not None:
            if not 0.0 <= alpha <= 1.0:
                raise ValueError(f"alpha must lie in [0, 1] (the distillation weight), got {alpha}")
            weights = [alpha, 1.0 - alpha]
        values = torch.tensor([float(w) for w in weights])
        valid = bool((values >= 0).all()) and bool(torch.isfinite(values).all()) and float(values.sum()) > 0
        if values.numel() < 2 or not valid:
            raise ValueError(
                f"fixed weights must be finite, >= 0, not all zero, at least two of them; got {list(weights)}"
            )
        super().__init__(values.numel())
        self.weights = values
        self.pi = values / values.sum()

    def to(self, device: torch.device | str) -> FixedWeights:
        super().to(device)
        self.weights = self.weights.to(device)
        return self

    def loss_weights(self, losses: torch.Tensor) -> torch.Tensor:
        return self.weights.to(losses.device)
