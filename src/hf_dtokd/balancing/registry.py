"""The methods by name: ``DTOKDConfig.method`` -> a balancer class, one line per method.

Everything else about a method is declared once, on its class in its module: how it is built from the config
(``from_config``, whose constructor checks the values), which config fields it reads (``config_fields``: the
model card reports them, and ``DTOKDConfig`` refuses them with a method that does not read them), and what it
needs of the trainer (``base.Balancer``). Adding a method is its module, one line here, its test and its section
in the docs; options without a field of their own go through ``DTOKDConfig.method_options``.
"""

from __future__ import annotations

from typing import Any

from hf_dtokd.balancing.aligned_mtl import AlignedMTL
from hf_dtokd.balancing.base import OBJECTIVES, Balancer
from hf_dtokd.balancing.cagrad import CAGrad
from hf_dtokd.balancing.dot import DOT, DOTAdamW
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

METHOD_REGISTRY: dict[str, type[Balancer]] = {
    "dto": DTOExact,
    "dto_amortized": FAMO,
    "fixed": FixedWeights,
    "famo": FAMO,
    "mgda": MGDA,
    "pcgrad": PCGrad,
    "cagrad": CAGrad,
    "upgrad": UPGrad,
    "imtl_g": IMTLG,
    "aligned_mtl": AlignedMTL,
    "dualproj": DualProj,
    "uncertainty": UncertaintyWeighting,
    "dot": DOT,
    "dot_adamw": DOTAdamW,
}
METHODS: tuple[str, ...] = tuple(METHOD_REGISTRY)
#: Gradient methods weighing the Gram of the per-loss gradients (the gradient-placement options apply to them).
GRAMIAN_METHODS: tuple[str, ...] = tuple(
    name for name, method in METHOD_REGISTRY.items() if issubclass(method, GramianBalancer)
)
#: Methods that learn from the losses after the optimizer step (``look_ahead`` applies to them).
LOOK_AHEAD_METHODS: tuple[str, ...] = tuple(
    name for name, method in METHOD_REGISTRY.items() if method.needs_look_ahead
)


def method_class(method: str) -> type[Balancer]:
    if method not in METHOD_REGISTRY:
        raise ValueError(f"unknown method {method!r}; valid values: {', '.join(METHODS)}")
    return METHOD_REGISTRY[method]


def readers_of(field: str) -> list[str]:
    """The methods whose balancer reads the config field ``field``."""
    return [name for name, method in METHOD_REGISTRY.items() if field in method.config_fields]


def build_balancer(config: Any, num_objectives: int = len(OBJECTIVES)) -> Balancer:
    """The balancer named by ``config.method`` for ``num_objectives`` losses, with the config's hyper-parameters
    and ``config.method_options`` (further keyword arguments of its constructor)."""
    balancer_class = method_class(config.method)
    options = getattr(config, "method_options", None) or {}
    try:
        return balancer_class.from_config(config, num_objectives, **options)
    except TypeError as error:
        if not options:
            raise
        raise ValueError(
            f"method_options {options} do not fit method={config.method!r} ({error}); give keyword arguments of "
            f"{balancer_class.__name__}'s constructor"
        ) from error
