"""IMTL-G (Liu et al., ICLR 2021), weights from torchjd's ``IMTLGWeighting``.

Finds weights ``w`` with ``sum w = 1`` such that the combined gradient ``d = sum_k w_k a_k`` has the
same projection on every unit gradient ``u_k = a_k / ||a_k||``: ``<d, u_1> = ... = <d, u_K>``.
Closed form on the Gramian (torchjd's generalisation to dependent gradients)::

    v = G^+ sqrt(diag(G)),    w = v / sum(v)    (w = 0 when sum(v) ~ 0)
"""

from __future__ import annotations

import torch
from torchjd.aggregation import IMTLGWeighting

from hf_dtokd.balancing.torchjd_weighting import TorchJDBalancer


class IMTLG(TorchJDBalancer):
    def make_weighting(self) -> torch.nn.Module:
        return IMTLGWeighting()
