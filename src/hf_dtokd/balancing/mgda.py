"""MGDA (Desideri 2012; Sener & Koltun 2018), weights from torchjd's ``MGDAWeighting``.

``p = argmin_{p >= 0, sum p = 1} ||sum_k p_k a_k||^2``, solved by Frank-Wolfe (torchjd: tolerance
1e-3, at most 100 iterations). On log-gradients (``log_gradients=True``) this is log-MGDA, i.e.
DTO-KD's exact mode up to the Frank-Wolfe tolerance; the library's exact ``dto`` uses the closed form.
"""

from __future__ import annotations

import torch
from torchjd.aggregation import MGDAWeighting

from hf_dtokd.balancing.torchjd_weighting import TorchJDBalancer


class MGDA(TorchJDBalancer):
    def make_weighting(self) -> torch.nn.Module:
        return MGDAWeighting()
