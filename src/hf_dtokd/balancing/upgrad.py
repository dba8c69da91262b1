"""UPGrad (Quinton & Rey, 2024, "Jacobian Descent"), weights from torchjd's ``UPGradWeighting``.

Each gradient ``a_k`` is projected onto the dual cone ``{d : <a_j, d> >= 0 for all j}`` of all the
gradients, and the projections are averaged: ``d = (1/K) sum_k proj(a_k)``. The projection is a
quadratic programme on the Gramian (quadprog); the result never conflicts with any objective.
"""

from __future__ import annotations

import torch
from torchjd.aggregation import UPGradWeighting

from hf_dtokd.balancing.torchjd_weighting import TorchJDBalancer


class UPGrad(TorchJDBalancer):
    def make_weighting(self) -> torch.nn.Module:
        return UPGradWeighting()
