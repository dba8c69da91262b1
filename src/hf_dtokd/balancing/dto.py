"""DTO-KD, exact mode (ICLR 2026, Theorem 3.1): the min-norm trade-off on the log-gradient Gram.

With log-gradients ``a_d = grad L_d / l_d`` and ``a_t = grad L_t / l_t`` (``l`` the shifted losses)
and their Gram matrix ``G = [[g11, g12], [g12, g22]]``::

    pi_d = clip((g22 - g12) / (g11 + g22 - 2 g12), 0, 1),    pi_t = 1 - pi_d

the min-norm point of the segment between ``a_d`` and ``a_t`` (two-task MGDA). At a vertex
(``g12 >= min(g11, g22)``) all the weight goes to the shorter log-gradient. The update direction
is ``g* = pi_d a_d + pi_t a_t``; when ``0 < pi_d < 1`` it satisfies
``<g*, a_d> = <g*, a_t> = ||g*||^2`` (equal contribution).

For ``K > 2`` objectives (the paper's multi-signal extension) ``pi`` is the exact min-norm point
of the simplex, ``argmin_{pi >= 0, sum pi = 1} pi^T G pi``, solved as a quadratic programme with
quadprog (through qpsolvers, the solver torchjd's projectors use); ``K = 2`` keeps the closed form,
which needs no host sync.

Edge cases:

* ``g11 + g22 - 2 g12 <= tol * (g11 + g22)`` (``a_d ~ a_t``, both zero included): ``pi = (1/2, 1/2)``;
* ``G`` or the losses not finite: keep the previous ``pi`` and count the event;
* one gradient exactly zero: the formula puts all weight on it and ``g* = 0`` (allowed, logged).
"""

from __future__ import annotations

import numpy as np
import torch

from hf_dtokd.balancing.gramian import GramianBalancer, log_gram

DEGENERATE_TOL = 1e-8
#: Ridge added to the trace-normalised Gram so quadprog's Cholesky accepts a rank-deficient Gram.
QP_RIDGE = 1e-10


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


def min_norm_weights(gram: torch.Tensor) -> torch.Tensor:
    """The min-norm point of the simplex for any ``K``: closed form at ``K = 2``, quadprog above.

    Raises ``ValueError`` when the solver finds no solution (the balancer then keeps its ``pi``).
    """
    k = gram.shape[0]
    if k == 2:
        return dto_closed_form(gram).double()
    from qpsolvers import solve_qp  # torchjd[quadprog-projector], a dependency of hf-dtokd

    matrix = gram.detach().double().cpu().numpy()
    scale = np.trace(matrix) / k
    if not scale > 0:  # every gradient is zero: nothing to balance
        return torch.full((k,), 1.0 / k, dtype=torch.float64, device=gram.device)
    matrix = (matrix + matrix.T) / (2.0 * scale) + QP_RIDGE * np.eye(k)
    solution = solve_qp(
        matrix, np.zeros(k), -np.eye(k), np.zeros(k), np.ones((1, k)), np.ones(1), solver="quadprog"
    )
    if solution is None:
        raise ValueError("quadprog found no min-norm point for this Gram")
    solution = np.clip(solution, 0.0, None)
    return torch.as_tensor(solution / solution.sum(), dtype=torch.float64, device=gram.device)


class DTOExact(GramianBalancer):
    """Exact DTO-KD: ``pi`` from the min-norm point of the log-gradient Gram each optimizer step."""

    log_gradients_by_default = True

    config_fields = (
        "temperature",
        "gradient_placement",
        "gram_parameters",
        "one_loss_parameters",
        "rescale",
        "log_gradients",
        "min_loss",
        "eps",
    )

    def __init__(
        self,
        num_objectives: int = 2,
        min_loss: float = 0.0,
        eps: float = 1e-8,
        rescale: str = "famo",
        log_gradients: bool = True,
    ) -> None:
        super().__init__(num_objectives, log_gradients, min_loss, eps, rescale)

    def weigh(self, gram: torch.Tensor) -> torch.Tensor:
        return min_norm_weights(gram)


__all__ = ["DTOExact", "dto_closed_form", "log_gram", "min_norm_weights"]
