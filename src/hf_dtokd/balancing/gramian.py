"""What every Gram-based trade-off method shares: weights from the window's per-loss gradient Gram.

A Gramian method maps the ``K x K`` Gram ``G`` of the per-loss gradients to weights ``p`` on those
gradients; the update is ``sum_k p_k a_k``. The gradients ``a_k`` are either the raw gradients
``g_k`` or the log-gradients ``g_k / l_k`` (``l_k = L_k - min_loss + eps``, ``log_gradients=True``:
scale-free, so a loss coefficient, ``T^2`` or ``1/num_classes`` does not change ``p``), whose Gram is
``R_ij / (l_i l_j)`` for the raw Gram ``R``.

Raw-loss weights applied by the trainer (``.grad = sum_k w_k g_k``):

* raw gradients: ``w = p``;
* log-gradients: ``w_k = p_k / l_k``; with ``rescale="famo"`` multiplied by ``sum(p) / sum_k(p_k / l_k)``
  so that ``sum(w) = sum(p)`` (the size of an ordinary weighted loss; FAMO's and LOG_MGDA's rule).

``pi = p / sum(p)`` is what is logged. A non-finite Gram or loss, a solver failure, or weights that are
not finite or sum to <= 0 keep the previous weights and count one ``nonfinite_events``.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch

from hf_dtokd.balancing.base import RESCALE_RULES, Balancer, shifted_losses


def log_gram(raw_gram: torch.Tensor, shifted: torch.Tensor) -> torch.Tensor:
    """Gram of the log-gradients from the Gram of the raw gradients: ``G_ij = R_ij / (l_i l_j)``."""
    scale = shifted.double()
    return raw_gram.double() / torch.outer(scale, scale)


class GramianBalancer(Balancer):
    """Base of the gradient methods that weigh the per-loss gradients from their Gram matrix."""

    config_fields = ("temperature", "gradient_placement", "log_gradients", "rescale")

    needs_gradients = True
    #: ``log_gradients`` when the config leaves it unset (the method's published form)
    log_gradients_by_default: bool = False
    #: constructor keyword -> the ``DTOKDConfig`` field it is read from, beyond the Gram options
    config_options: dict[str, str] = {}

    @classmethod
    def from_config(cls, config: Any, num_objectives: int, **options: Any) -> GramianBalancer:
        log_gradients = (
            config.log_gradients if config.log_gradients is not None else cls.log_gradients_by_default
        )
        options = {
            **{keyword: getattr(config, name) for keyword, name in cls.config_options.items()},
            **options,
        }
        return cls(
            num_objectives=num_objectives,
            log_gradients=log_gradients,
            min_loss=config.min_loss,
            eps=config.eps,
            rescale=config.rescale,
            **options,
        )

    def __init__(
        self,
        num_objectives: int = 2,
        log_gradients: bool = False,
        min_loss: float = 0.0,
        eps: float = 1e-8,
        rescale: str = "famo",
    ) -> None:
        super().__init__(num_objectives)
        if rescale not in RESCALE_RULES:
            raise ValueError(f"unknown rescale rule {rescale!r}; valid values: {', '.join(RESCALE_RULES)}")
        self.log_gradients, self.min_loss, self.eps, self.rescale = log_gradients, min_loss, eps, rescale
        #: Weights ``p`` on the (log-)gradients; uniform until the first update.
        self.gram_weights = torch.full((num_objectives,), 1.0 / num_objectives, dtype=torch.float64)

    @abstractmethod
    def weigh(self, gram: torch.Tensor) -> torch.Tensor:
        """Weights ``p`` (float64, one per objective) from a finite ``K x K`` Gram of the (log-)gradients."""

    def to(self, device: torch.device | str) -> GramianBalancer:
        super().to(device)
        self.gram_weights = self.gram_weights.to(device)
        return self

    def update_from_gram(self, raw_gram: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        shifted = shifted_losses(losses, self.min_loss, self.eps).to(raw_gram.device)
        gram = log_gram(raw_gram, shifted) if self.log_gradients else raw_gram.double()
        finite = torch.isfinite(gram).all() & torch.isfinite(shifted).all() & (shifted > 0).all()
        safe_gram = torch.where(
            finite, gram, torch.eye(self.num_objectives, dtype=gram.dtype, device=gram.device)
        )
        try:
            candidate = self.weigh(safe_gram).to(device=gram.device, dtype=torch.float64)
        except ValueError:  # a QP solver that found no solution (e.g. torchjd's projectors)
            candidate = torch.full_like(self.gram_weights, float("nan")).to(gram.device)
        accept = finite & torch.isfinite(candidate).all() & (candidate.sum() > 0)
        previous = self.gram_weights.to(gram.device)
        self.gram_weights = torch.where(accept, candidate, previous)
        self.pi = (self.gram_weights / self.gram_weights.sum()).float().to(self.pi.device)
        self.nonfinite_events = self.nonfinite_events + (~accept).long().to(self.nonfinite_events.device)
        return self.pi

    def loss_weights(self, losses: torch.Tensor) -> torch.Tensor:
        p = self.gram_weights.to(losses.device)
        if not self.log_gradients:
            return p.float()
        weights = p / shifted_losses(losses, self.min_loss, self.eps).double()
        if self.rescale == "famo":
            weights = weights * (p.sum() / weights.sum())
        return weights.float()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "gram_weights": self.gram_weights.detach().cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.gram_weights = state["gram_weights"].to(self.pi.device)
