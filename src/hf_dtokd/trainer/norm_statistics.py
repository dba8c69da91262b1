"""Forwards that measure without training: normalisation layers' running statistics left as they were.

The amortized methods (``dto_amortized``, ``famo``) re-forward the window after the optimizer step to
measure how far each loss moved. That forward must compute the same function as the training forward
it is compared with (train mode: batch statistics in BatchNorm, dropout drawn, as in FAMO's reference
code, which re-forwards the model in train mode), but it is a measurement: it must not update the
running mean / variance and ``num_batches_tracked`` a second time per step. Hand-written because no
kept library offers it: torch's ``BatchNorm`` updates its buffers in every train-mode forward.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase


@contextmanager
def preserved_running_statistics(model: nn.Module) -> Iterator[None]:
    """Run the body in whatever mode ``model`` is in, then restore every running statistic it changed."""
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    for module in model.modules():
        if isinstance(module, _NormBase) and module.track_running_stats:
            for buffer in (module.running_mean, module.running_var, module.num_batches_tracked):
                if buffer is not None:
                    saved.append((buffer, buffer.detach().clone()))
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
