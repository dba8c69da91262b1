"""CAGrad (Liu et al., NeurIPS 2021), weights from torchjd's ``CAGradWeighting``.

With ``g_0`` the mean gradient and ``phi = c^2 ||g_0||^2``, CAGrad solves
``max_d min_k <a_k, d>  s.t.  ||d - g_0|| <= sqrt(phi)`` through its dual over the simplex,
``w* = argmin_w <g_w, g_0> + sqrt(phi) ||g_w||``, and returns ``d = g_0 + sqrt(phi) g_w* / ||g_w*||``,
i.e. weights ``1/K + sqrt(phi) w* / ||g_w*||`` (torchjd solves the dual with cvxpy / Clarabel on the
normalised Gramian). ``c`` (``cagrad_c``, default 0.4) is the radius; ``c = 0`` is the mean.

Needs ``pip install "hf-dtokd[cagrad]"`` (cvxpy).
"""

from __future__ import annotations

import torch
from torchjd.aggregation import CAGradWeighting

from hf_dtokd.balancing.torchjd_weighting import TorchJDBalancer


class CAGrad(TorchJDBalancer):
    extra = "cagrad"
    config_fields = (*TorchJDBalancer.config_fields, "cagrad_c")
    config_options = {"c": "cagrad_c"}

    def __init__(self, num_objectives: int = 2, c: float = 0.4, **kwargs: object) -> None:
        if c < 0:
            raise ValueError(f"cagrad_c (CAGrad's radius c) must be >= 0, got {c}")
        self.c = c
        super().__init__(num_objectives, **kwargs)  # type: ignore[arg-type]

    def make_weighting(self) -> torch.nn.Module:
        return CAGradWeighting(c=self.c)
