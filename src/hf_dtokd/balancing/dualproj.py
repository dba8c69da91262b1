"""DualProj (torchjd; from the dual-cone projection of GEM / Jacobian Descent), ``DualProjWeighting``.

The mean gradient ``g_0 = (1/K) sum_k a_k`` is projected onto the dual cone of the gradients:
``d = argmin_{<a_j, d> >= 0 for all j} ||d - g_0||^2``, a quadratic programme on the Gramian
(quadprog). Unlike UPGrad, it projects the mean once instead of averaging projections.
"""

from __future__ import annotations

import torch
from torchjd.aggregation import DualProjWeighting

from hf_dtokd.balancing.torchjd_weighting import TorchJDBalancer


class DualProj(TorchJDBalancer):
    def make_weighting(self) -> torch.nn.Module:
        return DualProjWeighting()
