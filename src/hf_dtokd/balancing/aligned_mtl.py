"""Aligned-MTL (Senushkin et al., CVPR 2023), weights from torchjd's ``AlignedMTLWeighting``.

Aligns the gradients' principal components: with the Gramian's eigen-decomposition
``G = V diag(lambda) V^T``, the balance matrix is ``B = sqrt(lambda_min) V diag(lambda)^{-1/2} V^T``
(torchjd's ``scale_mode="min"``), and the weights are ``B`` applied to the uniform preference ``1/K``.
The result has a condition number of one across objectives.
"""

from __future__ import annotations

import torch
from torchjd.aggregation import AlignedMTLWeighting

from hf_dtokd.balancing.torchjd_weighting import TorchJDBalancer


class AlignedMTL(TorchJDBalancer):
    def make_weighting(self) -> torch.nn.Module:
        return AlignedMTLWeighting()
