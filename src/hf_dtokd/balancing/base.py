"""What every trade-off method shares: the objectives' order, the log-loss shift and the raw-loss weights.

A balancer holds ``pi``, a point of the simplex over the objectives (``OBJECTIVES`` order:
distillation first, task second, as in METHODS.md), and turns it into the raw-loss weights
``w`` that the trainer applies: either to the losses before the single backward
(fixed / amortized methods) or to the per-loss gradients at the end of the accumulation window
(exact method). State lives on the training device and never needs a host sync, so the
trainer's hot path stays asynchronous.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

OBJECTIVES: tuple[str, ...] = ("distill", "task")
RESCALE_RULES: tuple[str, ...] = ("famo", "none")


def shifted_losses(losses: torch.Tensor, min_loss: float, eps: float) -> torch.Tensor:
    """``L_i - min_loss + eps`` in float32: the argument of every log-loss (METHODS.md 1.1, edge cases).

    A distillation loss of exactly 0 (student equals teacher) stays strictly positive, so its log
    and the log-gradient ``g_i / (L_i - min_loss + eps)`` are finite.
    """
    return losses.float() - min_loss + eps


def raw_loss_weights(pi: torch.Tensor, shifted: torch.Tensor, rescale: str) -> torch.Tensor:
    """Raw-loss weights ``w_i`` such that ``sum_i w_i grad L_i`` is the balanced direction.

    The balanced direction on log-gradients is ``sum_i pi_i grad L_i / l_i`` (``l`` the shifted
    losses). With ``rescale="famo"`` it is divided by ``c = sum_i pi_i / l_i`` (FAMO and LOG_MGDA's
    rule), so that ``sum_i w_i = 1`` and the step has the size of an ordinary weighted KD loss;
    ``rescale="none"`` keeps the paper's literal direction.
    """
    weights = pi / shifted
    if rescale == "famo":
        return weights / weights.sum()
    if rescale == "none":
        return weights
    raise ValueError(f"unknown rescale rule {rescale!r}; valid values: {', '.join(RESCALE_RULES)}")


class Balancer(ABC):
    """A trade-off method: keeps ``pi`` over ``OBJECTIVES`` and turns it into raw-loss weights."""

    #: True when the method needs the per-loss gradients of the accumulation window.
    needs_gradients: bool = False
    #: True when the method updates itself from the losses measured after the optimizer step.
    needs_look_ahead: bool = False

    #: The current point of the simplex, one entry per objective.
    pi: torch.Tensor

    def __init__(self) -> None:
        self.pi = torch.full((len(OBJECTIVES),), 1.0 / len(OBJECTIVES))
        self.nonfinite_events = torch.zeros((), dtype=torch.long)

    def to(self, device: torch.device | str) -> Balancer:
        self.pi = self.pi.to(device)
        self.nonfinite_events = self.nonfinite_events.to(device)
        return self

    @abstractmethod
    def loss_weights(self, losses: torch.Tensor) -> torch.Tensor:
        """Raw-loss weights (one per objective) for the current ``pi`` at these loss values."""

    def update_from_gram(self, raw_gram: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """Gradient methods (``needs_gradients``): set ``pi`` from the window's raw-gradient Gram."""
        raise NotImplementedError(f"{type(self).__name__} sets needs_gradients but has no update_from_gram")

    def update(self, losses_before: torch.Tensor, losses_after: torch.Tensor) -> bool:
        """Look-ahead methods (``needs_look_ahead``): update from the losses before / after the step."""
        raise NotImplementedError(f"{type(self).__name__} sets needs_look_ahead but has no update")

    def state_dict(self) -> dict[str, Any]:
        return {"pi": self.pi.detach().cpu(), "nonfinite_events": self.nonfinite_events.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.pi.device
        self.pi = state["pi"].to(device)
        self.nonfinite_events = state["nonfinite_events"].to(device)
