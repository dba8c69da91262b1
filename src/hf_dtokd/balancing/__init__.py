"""Trade-off methods: one module each, with its formula in the module docstring.

``build_balancer(config, num_objectives)`` (``registry.py``, one line per method) maps ``DTOKDConfig.method`` to an
instance built by the class's ``from_config``;
a custom method is any :class:`Balancer` subclass passed to ``DTOKDTrainer(balancer=...)``. What a method
needs of the trainer (per-loss gradients, a look-ahead, the update itself, clipping, the config fields
the model card reports) is declared on its class (see ``base.Balancer``).
"""

from __future__ import annotations

from hf_dtokd.balancing.aligned_mtl import AlignedMTL
from hf_dtokd.balancing.base import OBJECTIVES, RESCALE_RULES, Balancer, raw_loss_weights, shifted_losses
from hf_dtokd.balancing.cagrad import CAGrad
from hf_dtokd.balancing.dot import DOT, DOT_BIAS_CORRECTIONS, DOT_FORMS, DOT_SECOND_MOMENTS, DOTAdamW
from hf_dtokd.balancing.dto import DTOExact, dto_closed_form, log_gram, min_norm_weights
from hf_dtokd.balancing.dualproj import DualProj
from hf_dtokd.balancing.famo import FAMO
from hf_dtokd.balancing.fixed import FixedWeights
from hf_dtokd.balancing.gramian import GramianBalancer
from hf_dtokd.balancing.imtl_g import IMTLG
from hf_dtokd.balancing.mgda import MGDA
from hf_dtokd.balancing.pcgrad import PCGrad
from hf_dtokd.balancing.registry import (
    GRAMIAN_METHODS,
    LOOK_AHEAD_METHODS,
    METHOD_REGISTRY,
    METHODS,
    build_balancer,
    method_class,
    readers_of,
)
from hf_dtokd.balancing.torchjd_weighting import TorchJDBalancer
from hf_dtokd.balancing.uncertainty import UncertaintyWeighting
from hf_dtokd.balancing.upgrad import UPGrad

__all__ = [
    "DOT",
    "DOT_FORMS",
    "DOT_BIAS_CORRECTIONS",
    "DOT_SECOND_MOMENTS",
    "DOTAdamW",
    "LOOK_AHEAD_METHODS",
    "METHOD_REGISTRY",
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
    "method_class",
    "readers_of",
    "dto_closed_form",
    "log_gram",
    "min_norm_weights",
    "raw_loss_weights",
    "shifted_losses",
]
