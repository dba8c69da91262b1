"""PCGrad (Yu et al., NeurIPS 2020), weights from torchjd's ``PCGradWeighting``, as a mean.

Each gradient is projected onto the normal plane of every gradient it conflicts with, and the
projections are summed. For two objectives (METHODS.md 2): if ``g12 < 0``::

    d = (1 - g12 / g11) a_1 + (1 - g12 / g22) a_2,    else d = a_1 + a_2.

torchjd returns the weights of this sum; we divide by ``K`` (``scale = 1/K``) so the step has the size
of a mean, like every other method here (a fixed-alpha loss has weights summing to 1).
"""

from __future__ import annotations

import torch
from torchjd.aggregation import PCGradWeighting

from .torchjd_weighting import TorchJDBalancer


class PCGrad(TorchJDBalancer):
    def __init__(self, num_objectives: int = 2, **kwargs: object) -> None:
        super().__init__(num_objectives, scale=1.0 / num_objectives, **kwargs)  # type: ignore[arg-type]

    def make_weighting(self) -> torch.nn.Module:
        return PCGradWeighting()
