"""Adapter from a torchjd Gramian ``Weighting`` to a balancer: the trainer's weights are torchjd's.

torchjd (PyPI ``torchjd``) implements the Jacobian-descent weightings (MGDA, PCGrad, CAGrad, UPGrad,
IMTL-G, Aligned-MTL, DualProj, ...) as ``Weighting`` objects that map a PSD Gramian to one weight
per objective; its aggregators apply ``J^T w``. We call them on the window's Gram of the raw
gradients or, with ``log_gradients=True``, of the log-gradients (see ``gramian.py``), so nothing of
these methods is re-written here. ``scale`` multiplies torchjd's weights (PCGrad uses it to turn
torchjd's sum into a mean).

A weighting whose optional dependency is missing raises ``ImportError`` naming the hf-dtokd extra.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hf_dtokd.balancing.gramian import GramianBalancer


def build_weighting(factory: Callable[[], torch.nn.Module], extra: str | None) -> torch.nn.Module:
    """Instantiate a torchjd weighting, turning torchjd's missing-dependency error into ours."""
    try:
        return factory()
    except ImportError as error:
        hint = f'pip install "hf-dtokd[{extra}]"' if extra else 'pip install "torchjd[full]"'
        raise ImportError(f"{error}. This trade-off method needs an optional dependency: {hint}") from error


class TorchJDBalancer(GramianBalancer):
    """A Gramian balancer whose weights come from a torchjd ``Weighting``."""

    #: The hf-dtokd extra that installs the weighting's optional dependencies (None: core install).
    extra: str | None = None

    def __init__(
        self,
        num_objectives: int = 2,
        log_gradients: bool = False,
        min_loss: float = 0.0,
        eps: float = 1e-8,
        rescale: str = "famo",
        scale: float = 1.0,
    ) -> None:
        super().__init__(num_objectives, log_gradients, min_loss, eps, rescale)
        self.scale = scale
        self.weighting = build_weighting(self.make_weighting, self.extra)

    def make_weighting(self) -> torch.nn.Module:
        raise NotImplementedError(f"{type(self).__name__} must build its torchjd weighting")

    def weigh(self, gram: torch.Tensor) -> torch.Tensor:
        return self.scale * self.weighting(gram).double()
