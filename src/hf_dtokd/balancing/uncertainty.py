"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018) with learnable log-variances ``s``.

    L = sum_k exp(-s_k) L_k / 2 + s_k / 2

The student receives ``sum_k w_k grad L_k`` with raw-loss weights ``w_k = exp(-s_k) / 2``
(``s = 0`` at the start: ``w = (1/2, ..., 1/2)``). After each accumulation window ``s`` takes one Adam
step (learning rate ``tradeoff_learning_rate``, weight decay ``tradeoff_weight_decay``) on

    dL/ds_k = (1 - exp(-s_k) L_k) / 2

with ``L_k`` the window's process-averaged losses, so every rank holds the same ``s``. At the
stationary point ``exp(-s_k) = 1 / L_k``: the weights approach ``1 / (2 L_k)``. ``s`` has its own
optimizer (not the Trainer's) so it needs no place in the student's parameters and is saved with
the balancer state. ``pi = w / sum(w)``. A non-finite loss skips the update and counts the event.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from hf_dtokd.balancing.base import OBJECTIVES, Balancer


class UncertaintyWeighting(Balancer):
    config_fields = ("temperature", "tradeoff_learning_rate", "tradeoff_weight_decay")

    @classmethod
    def from_config(cls, config: Any, num_objectives: int, **options: Any) -> UncertaintyWeighting:
        return cls(
            num_objectives,
            lr=config.tradeoff_learning_rate,
            weight_decay=config.tradeoff_weight_decay,
            **options,
        )

    def __init__(
        self, num_objectives: int = len(OBJECTIVES), lr: float = 0.025, weight_decay: float = 0.0
    ) -> None:
        super().__init__(num_objectives)
        if lr <= 0:
            raise ValueError(f"the trade-off learning rate (tradeoff_learning_rate) must be > 0, got {lr}")
        if weight_decay < 0:
            raise ValueError(
                f"the trade-off weight decay (tradeoff_weight_decay) must be >= 0, got {weight_decay}"
            )
        self.log_variance = torch.zeros(num_objectives, requires_grad=True)
        self._optimizer = torch.optim.Adam([self.log_variance], lr=lr, weight_decay=weight_decay)

    @property
    def pi(self) -> torch.Tensor:  # type: ignore[override]  # derived from s, never stored
        return torch.softmax(-self.log_variance.detach(), dim=-1)

    @pi.setter
    def pi(self, value: torch.Tensor) -> None:  # Balancer.__init__ sets a uniform pi; s = 0 already is
        pass

    def to(self, device: torch.device | str) -> UncertaintyWeighting:
        self.nonfinite_events = self.nonfinite_events.to(device)
        if self.log_variance.device != torch.device(device):
            state = self._optimizer.state_dict()
            with torch.no_grad():
                self.log_variance.data = self.log_variance.data.to(device)
            self._optimizer.load_state_dict(state)
        return self

    def loss_weights(self, losses: torch.Tensor) -> torch.Tensor:
        return 0.5 * torch.exp(-self.log_variance.detach()).to(losses.device)

    def observe_window(self, losses: torch.Tensor) -> None:
        losses = losses.detach().float().to(self.log_variance.device)
        if not bool(torch.isfinite(losses).all()):  # one host sync per optimizer step
            self.nonfinite_events = self.nonfinite_events + 1
            return
        self._optimizer.zero_grad()
        self.log_variance.grad = 0.5 * (1.0 - torch.exp(-self.log_variance.detach()) * losses)
        self._optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "log_variance": self.log_variance.detach().cpu(),
            "optimizer": copy.deepcopy(self._optimizer.state_dict()),
            "nonfinite_events": self.nonfinite_events.cpu(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.log_variance.copy_(state["log_variance"].to(self.log_variance.device))
        self._optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.nonfinite_events = state["nonfinite_events"].to(self.nonfinite_events.device)
