"""Trade-off methods: one module each, with its formula in the module docstring.

``build_balancer(config)`` maps ``DTOKDConfig.method`` to an instance; a custom method is any
:class:`Balancer` subclass passed to ``DTOKDTrainer(balancer=...)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import OBJECTIVES, RESCALE_RULES, Balancer, raw_loss_weights, shifted_losses
from .dto import DTOExact, dto_closed_form, log_gram
from .famo import FAMO
from .fixed import FixedWeights

if TYPE_CHECKING:
    from ..config import DTOKDConfig

METHODS: tuple[str, ...] = ("dto", "dto_amortized", "fixed")


def build_balancer(config: DTOKDConfig) -> Balancer:
    """The balancer named by ``config.method``, with the config's hyper-parameters."""
    if config.method == "dto":
        return DTOExact(min_loss=config.min_loss, eps=config.eps, rescale=config.rescale)
    if config.method == "dto_amortized":
        return FAMO(
            lr=config.tradeoff_learning_rate,
            weight_decay=config.tradeoff_weight_decay,
            min_loss=config.min_loss,
            eps=config.eps,
            rescale=config.rescale,
        )
    if config.method == "fixed":
        return FixedWeights(alpha=config.alpha)
    raise ValueError(f"unknown method {config.method!r}; valid values: {', '.join(METHODS)}")


__all__ = [
    "FAMO",
    "METHODS",
    "OBJECTIVES",
    "RESCALE_RULES",
    "Balancer",
    "DTOExact",
    "FixedWeights",
    "build_balancer",
    "dto_closed_form",
    "log_gram",
    "raw_loss_weights",
    "shifted_losses",
]
