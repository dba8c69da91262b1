"""DTO-KD, exact mode (ICLR 2026, Theorem 3.1): the closed-form trade-off on the log-gradient Gram.

With log-gradients ``a_d = grad L_d / l_d`` and ``a_t = grad L_t / l_t`` (``l`` the shifted losses)
and their Gram matrix ``G = [[g11, g12], [g12, g22]]``::

    pi_d = clip((g22 - g12) / (g11 + g22 - 2 g12), 0, 1),    pi_t = 1 - pi_d

the min-norm point of the segment between ``a_d`` and ``a_t`` (two-task MGDA). At a vertex
(``g12 >= min(g11, g22)``) all the weight goes to the shorter log-gradient. The update direction
is ``g* = pi_d a_d + pi_t a_t``; when ``0 < pi_d < 1`` it satisfies
``<g*, a_d> = <g*, a_t> = ||g*||^2`` (equal contribution).

Edge cases (METHODS.md 1.1):

* ``g11 + g22 - 2 g12 <= tol * (g11 + g22)`` (``a_d ~ a_t``, both zero included): ``pi = (1/2, 1/2)``;
* ``G`` or the losses not finite: keep the previous ``pi`` and count the event;
* one gradient exactly zero: the formula puts all weight on it and ``g* = 0`` (allowed, logged).
"""

from __future__ import annotations

import torch

from .base import Balancer, raw_loss_weights, shifted_losses

DEGENERATE_TOL = 1e-8


def dto_closed_form(gram: torch.Tensor, tol: float = DEGENERATE_TOL) -> torch.Tensor:
    """``pi = (pi_d, pi_t)`` from a 2x2 Gram of (log-)gradients, computed without a host sync."""
    gram = gram.double()
    g11, g12, g22 = gram[0, 0], gram[0, 1], gram[1, 1]
    denominator = g11 + g22 - 2.0 * g12
    degenerate = denominator <= tol * (g11 + g22)
    safe_denominator = torch.where(degenerate, torch.ones_like(denominator), denominator)
    pi_d = torch.where(
        degenerate, torch.full_like(g11, 0.5), ((g22 - g12) / safe_denominator).clamp(0.0, 1.0)
    )
    return torch.stack([pi_d, 1.0 - pi_d]).float()


def log_gram(raw_gram: torch.Tensor, shifted: torch.Tensor) -> torch.Tensor:
    """Gram of the log-gradients from the Gram of the raw gradients: ``G_ij = R_ij / (l_i l_j)``."""
    scale = shifted.double()
    return raw_gram.double() / torch.outer(scale, scale)


class DTOExact(Balancer):
    """Exact DTO-KD: ``pi`` from the closed form each optimizer step, the balanced gradient applied."""

    needs_gradients = True

    def __init__(self, min_loss: float = 0.0, eps: float = 1e-8, rescale: str = "famo") -> None:
        super().__init__()
        self.min_loss, self.eps, self.rescale = min_loss, eps, rescale
        raw_loss_weights(self.pi, torch.ones(2), rescale)  # validates the rule name now

    def update_from_gram(self, raw_gram: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """Set ``pi`` from the raw per-loss gradient Gram and the window's losses; return it.

        A non-finite Gram or loss keeps the previous ``pi`` and increments ``nonfinite_events``.
        """
        shifted = shifted_losses(losses, self.min_loss, self.eps)
        gram = log_gram(raw_gram, shifted)
        finite = torch.isfinite(gram).all() & torch.isfinite(shifted).all() & (shifted > 0).all()
        candidate = dto_closed_form(
            torch.where(finite, gram, torch.eye(2, dtype=gram.dtype, device=gram.device))
        )
        self.pi = torch.where(finite, candidate.to(self.pi.device), self.pi)
        self.nonfinite_events = self.nonfinite_events + (~finite).long()
        return self.pi

    def loss_weights(self, losses: torch.Tensor) -> torch.Tensor:
        return raw_loss_weights(
            self.pi.to(losses.device), shifted_losses(losses, self.min_loss, self.eps), self.rescale
        )
