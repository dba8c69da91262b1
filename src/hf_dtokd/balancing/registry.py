"""The methods by name: ``DTOKDConfig.method`` -> a balancer with the config's hyper-parameters.

Reads the config through ``BalancerSettings`` (the fields it uses), so that the config module may import
the method names from here without an import cycle.
"""

from __future__ import annotations

from typing import Protocol

from hf_dtokd.balancing.aligned_mtl import AlignedMTL
from hf_dtokd.balancing.base import OBJECTIVES, Balancer
from hf_dtokd.balancing.cagrad import CAGrad
from hf_dtokd.balancing.dot import DOT
from hf_dtokd.balancing.dto import DTOExact
from hf_dtokd.balancing.dualproj import DualProj
from hf_dtokd.balancing.famo import FAMO
from hf_dtokd.balancing.fixed import FixedWeights
from hf_dtokd.balancing.gramian import GramianBalancer
from hf_dtokd.balancing.imtl_g import IMTLG
from hf_dtokd.balancing.mgda import MGDA
from hf_dtokd.balancing.pcgrad import PCGrad
from hf_dtokd.balancing.uncertainty import UncertaintyWeighting
from hf_dtokd.balancing.upgrad import UPGrad


class BalancerSettings(Protocol):
    """The ``DTOKDConfig`` fields a method is built from."""

    method: str
    alpha: float
    log_gradients: bool | None
    min_loss: float
    eps: float
    rescale: str
    cagrad_c: float
    tradeoff_learning_rate: float
    tradeoff_weight_decay: float
    dot_momentum: float
    dot_delta: float
    adam_beta2: float
    adam_epsilon: float


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


def build_balancer(config: BalancerSettings, num_objectives: int = len(OBJECTIVES)) -> Balancer:
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
