"""FAMO (Liu et al., NeurIPS 2023) for K objectives; DTO-KD's amortized mode is its K = 2 case.

``pi = softmax(xi)``, ``xi = 0`` at the start. Each optimizer step:

1. backward ``sum_i (pi_i / c) log l_i`` with ``l_i = L_i - min_loss + eps`` and
   ``c = sum_i pi_i / l_i`` (pi, c detached), i.e. the raw-loss weights ``w_i = pi_i / (c l_i)``;
2. after the optimizer step, recompute the losses on the same batch without grad: ``l'_i``;
3. ``delta_i = log l_i - log l'_i`` (the achieved drop in log-loss);
4. ``xi.grad = J_softmax(xi)^T delta = pi * (delta - <pi, delta>)``, one Adam step on ``xi``
   (learning rate 0.025, weight decay 0.01). The objective that fell faster loses weight.

Since ``delta ~ lr * G pi`` this is a gradient step on ``1/2 ||J pi||^2``, the dual that the exact
mode solves in closed form. A non-finite ``delta`` skips the ``xi`` update and counts the event.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from hf_dtokd.balancing.base import OBJECTIVES, Balancer, raw_loss_weights, shifted_losses


class FAMO(Balancer):
    needs_look_ahead = True
    config_fields = ("temperature", "rescale", "tradeoff_learning_rate", "tradeoff_weight_decay")

    @classmethod
    def from_config(cls, config: Any, num_objectives: int, **options: Any) -> FAMO:
        return cls(
            num_objectives=num_objectives,
            lr=config.tradeoff_learning_rate,
            weight_decay=config.tradeoff_weight_decay,
            min_loss=config.min_loss,
            eps=config.eps,
            rescale=config.rescale,
            **options,
        )

    def __init__(
        self,
        num_objectives: int = len(OBJECTIVES),
        lr: float = 0.025,
        weight_decay: float = 0.01,
        min_loss: float = 0.0,
        eps: float = 1e-8,
        rescale: str = "famo",
    ) -> None:
        if num_objectives < 2:
            raise ValueError(
                f"a trade-off needs at least two objectives, got num_objectives={num_objectives}"
            )
        self.num_objectives = num_objectives
        self.nonfinite_events = torch.zeros((), dtype=torch.long)
        if lr <= 0:
            raise ValueError(f"the trade-off learning rate (tradeoff_learning_rate) must be > 0, got {lr}")
        if weight_decay < 0:
            raise ValueError(
                f"the trade-off weight decay (tradeoff_weight_decay) must be >= 0, got {weight_decay}"
            )
        self.min_loss, self.eps, self.rescale = min_loss, eps, rescale
        raw_loss_weights(torch.ones(num_objectives), torch.ones(num_objectives), rescale)
        self.xi = torch.zeros(num_objectives, requires_grad=True)
        self._optimizer = torch.optim.Adam([self.xi], lr=lr, weight_decay=weight_decay)

    @property
    def pi(self) -> torch.Tensor:  # type: ignore[override]  # derived from xi, never stored
        return torch.softmax(self.xi.detach(), dim=-1)

    def to(self, device: torch.device | str) -> FAMO:
        self.nonfinite_events = self.nonfinite_events.to(device)
        if self.xi.device != torch.device(device):
            state = self._optimizer.state_dict()
            with torch.no_grad():
                self.xi.data = self.xi.data.to(device)
            self._optimizer.load_state_dict(state)  # re-creates the Adam moments on xi's device
        return self

    def loss_weights(self, losses: torch.Tensor) -> torch.Tensor:
        shifted = shifted_losses(losses, self.min_loss, self.eps)
        return raw_loss_weights(self.pi.to(losses.device), shifted, self.rescale)

    def update(self, losses_before: torch.Tensor, losses_after: torch.Tensor) -> bool:
        """One Adam step on ``xi`` from the losses before and after the optimizer step.

        Returns False (and counts the event) when ``delta`` is not finite; ``xi`` is then unchanged.
        """
        before = shifted_losses(losses_before, self.min_loss, self.eps).to(self.xi.device)
        after = shifted_losses(losses_after, self.min_loss, self.eps).to(self.xi.device)
        delta = before.log() - after.log()
        if not bool(torch.isfinite(delta).all()):  # one host sync per optimizer step, amortized mode only
            self.nonfinite_events = self.nonfinite_events + 1
            return False
        pi = self.pi
        self._optimizer.zero_grad()
        self.xi.grad = pi * (delta - (pi * delta).sum())
        self._optimizer.step()
        return True

    def state_dict(self) -> dict[str, Any]:
        return {
            "xi": self.xi.detach().cpu(),
            "optimizer": copy.deepcopy(self._optimizer.state_dict()),  # Adam's state_dict shares its moments
            "nonfinite_events": self.nonfinite_events.cpu(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.xi.copy_(state["xi"].to(self.xi.device))
        self._optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.nonfinite_events = state["nonfinite_events"].to(self.nonfinite_events.device)
