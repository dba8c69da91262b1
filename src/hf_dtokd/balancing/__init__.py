"""Trade-off methods: one module each, with its formula in the module docstring.

``build_balancer(config, num_objectives)`` maps ``DTOKDConfig.method`` to an instance; a custom
method is any :class:`Balancer` subclass passed to ``DTOKDTrainer(balancer=...)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .aligned_mtl import AlignedMTL
from .base import OBJECTIVES, RESCALE_RULES, Balancer, raw_loss_weights, shifted_losses
from .cagrad import CAGrad
from .dot import DOT, DOT_FORMS
from .dto import DTOExact, dto_closed_form, log_gram, min_norm_weights
from .dualproj import DualProj
from .famo import FAMO
from .fixed import FixedWeights
from .gramian import GramianBalancer
from .imtl_g import IMTLG
from .mgda import MGDA
from .pcgrad import PCGrad
from .torchjd_weighting import TorchJDBalancer
from .uncertainty import UncertaintyWeighting
from .upgrad import UPGrad

if TYPE_CHECKING:
    from ..config import DTOKDConfig

#: Gradient methods weighing the Gram of the per-loss gradients (``log_gradients`` applies to them).
GRAMIAN_METHODS: dict[str, type[GramianBalancer]] = {
    "dto": DTOExact,
    "mgda": MGDA,
    "pcgrad": PCGrad,
    "cagrad": CAGrad,
    "upgrad": UPGrad,
    "imtl_g": IMTLG,
    "aligned_mtl": AlignedMTL,
    "dualproj": DualProj,
}
METHODS: tuple[str, ...] = (
    "dto",
    "dto_amortized",
    "fixed",
    "famo",
    *[name for name in GRAMIAN_METHODS if name != "dto"],
    "uncertainty",
    "dot",
    "dot_adamw",
)


def build_balancer(config: DTOKDConfig, num_objectives: int = len(OBJECTIVES)) -> Balancer:
    """The balancer named by ``config.method`` for ``num_objectives`` losses, with the config's hyper-parameters."""
    method = config.method
    if method in GRAMIAN_METHODS:
        log_gradients = config.log_gradients if config.log_gradients is not None else method == "dto"
        common = dict(
            num_objectives=num_objectives,
            log_gradients=log_gradients,
            min_loss=config.min_loss,
            eps=config.eps,
            rescale=config.rescale,
        )
        if method == "cagrad":
            return CAGrad(c=config.cagrad_c, **common)
        return GRAMIAN_METHODS[method](**common)
    if method in ("dto_amortized", "famo"):
        return FAMO(
            num_objectives=num_objectives,
            lr=config.tradeoff_learning_rate,
            weight_decay=config.tradeoff_weight_decay,
            min_loss=config.min_loss,
            eps=config.eps,
            rescale=config.rescale,
        )
    if method == "uncertainty":
        return UncertaintyWeighting(
            num_objectives, lr=config.tradeoff_learning_rate, weight_decay=config.tradeoff_weight_decay
        )
    if method in ("fixed", "dot", "dot_adamw") and num_objectives != 2:
        raise ValueError(
            f"method={method!r} weighs two objectives with alpha, but the trainer has {num_objectives}; pass "
            "balancer=FixedWeights(weights=[...]) (one weight per objective) or choose a K-objective method "
            "(dto, dto_amortized, famo, uncertainty, or a torchjd weighting)"
        )
    if method == "fixed":
        return FixedWeights(alpha=config.alpha)
    if method in ("dot", "dot_adamw"):
        return DOT(
            alpha=config.alpha,
            momentum=config.dot_momentum,
            delta=config.dot_delta,
            form="adamw" if method == "dot_adamw" else "sgd",
            beta2=config.adam_beta2,
            adam_eps=config.adam_epsilon,
        )
    raise ValueError(f"unknown method {method!r}; valid values: {', '.join(METHODS)}")


__all__ = [
    "DOT",
    "DOT_FORMS",
    "FAMO",
    "GRAMIAN_METHODS",
    "IMTLG",
    "MGDA",
    "METHODS",
    "OBJECTIVES",
    "RESCALE_RULES",
    "AlignedMTL",
    "Balancer",
    "CAGrad",
    "DTOExact",
    "DualProj",
    "FixedWeights",
    "GramianBalancer",
    "PCGrad",
    "TorchJDBalancer",
    "UPGrad",
    "UncertaintyWeighting",
    "build_balancer",
    "dto_closed_form",
    "log_gram",
    "min_norm_weights",
    "raw_loss_weights",
    "shifted_losses",
]
