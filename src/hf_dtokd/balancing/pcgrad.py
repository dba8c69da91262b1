"""PCGrad (Yu et al., NeurIPS 2020), weights from torchjd's ``PCGradWeighting``, as a mean.

Each gradient is projected onto the normal plane of every gradient it conflicts with, and the
projections are summed. For two objectives: if ``g12 < 0``::

    d = (1 - g12 / g11) a_1 + (1 - g12 / g22) a_2,    else d = a_1 + a_2.

torchjd returns the weights of this sum; we divide by ``K`` (``scale = 1/K``) so the step has the size
of a mean, like every other method here (a fixed-alpha loss has weights summing to 1).

For ``K > 2`` the projections follow a random order (as in the paper; torchjd draws it from torch's
global generator). We draw it under a forked generator seeded with ``seed + step``, so every process
picks the same order, the run's own random stream is untouched, and a resumed run continues the
sequence (the step count is saved).
"""

from __future__ import annotations

from typing import Any

import torch
from torchjd.aggregation import PCGradWeighting

from hf_dtokd.balancing.torchjd_weighting import TorchJDBalancer


class PCGrad(TorchJDBalancer):
    def __init__(self, num_objectives: int = 2, seed: int = 0, **kwargs: object) -> None:
        super().__init__(num_objectives, scale=1.0 / num_objectives, **kwargs)  # type: ignore[arg-type]
        self.seed, self.calls = seed, 0

    def make_weighting(self) -> torch.nn.Module:
        return PCGradWeighting()

    def weigh(self, gram: torch.Tensor) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + self.calls)
            self.calls += 1
            return super().weigh(gram)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.calls = int(state["calls"])
