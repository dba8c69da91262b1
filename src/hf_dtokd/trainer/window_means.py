"""Exact window means under gradient accumulation and data parallelism, whatever the micro-batch counts.

The losses are computed per micro-batch as means: the distillation losses over the micro-batch's ``b``
examples, the task loss over its ``m`` labelled units (the task's ``example_counts``: labelled images in
classification, where label ``-100`` marks an unlabelled example; labelled pixels in segmentation). The
trainer divides each micro-batch's losses by the ``s`` micro-batches of the window and DDP averages over
the ``P`` processes, which gives the mean of micro-batch means. That equals the window's mean only when
every micro-batch has the same count: not when labelled examples are spread unevenly (a transfer set) or
the epoch's last window has a short micro-batch. The fix is a per-micro-batch factor, from the window's
totals ``N = sum b`` and ``M = sum m`` (over micro-batches and processes)::

    scale_distill = b s P / N,     scale_task = m s P / M

so that ``(1/P) sum_r (1/s) sum_j scale_{rj} mean_{rj} = sum_{r,j} sum_{rj} / N`` (resp. ``/ M``), the
loss of one batch holding the whole window; the gradients follow by linearity. With equal counts every
factor is exactly 1. ``M = 0`` (a window without labelled examples) gives ``m = 0`` in every micro-batch:
the task factor is 0, the task loss already is. The totals are counted from the window's batches before
its first forward (the Trainer prefetches the window), like transformers' ``num_items_in_batch`` (which
counts only the labels, so it does not serve the distillation loss, and is not computed for models
without loss kwargs), and summed over processes (one all-reduce per window) unless
``average_tokens_across_devices=False`` (then ``P = 1`` and each process uses its own window's means).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator


@dataclass
class WindowCounts:
    """A window's example and labelled-example totals (over the counted processes) and its shape."""

    examples: torch.Tensor  # N, float32 scalar (integers exact up to 2^24 per window)
    labelled: torch.Tensor  # M
    micro_batches: int  # s
    processes: int  # P


def count_window(
    batch_samples: Sequence[Any],
    counter: Callable[[Any], torch.Tensor | None],
    accelerator: Accelerator,
    across_processes: bool,
) -> WindowCounts | None:
    """Totals of the window's batches, each counted by the task's ``counter`` (``[examples, labelled units]``
    of a batch's labels); None when a batch is not counted (its losses keep their own normalisation)."""
    counts: torch.Tensor | None = None
    for batch in batch_samples:
        found = counter(batch.get("labels")) if isinstance(batch, dict) else None
        if found is None:
            return None
        counts = found.float() if counts is None else counts + found.to(counts.device)  # no host sync
    if counts is None:
        return None
    processes = accelerator.num_processes if across_processes else 1
    if processes > 1:
        counts = accelerator.reduce(counts.to(accelerator.device), reduction="sum")
    return WindowCounts(counts[0], counts[1], len(batch_samples), processes)


def micro_batch_scales(batch_counts: torch.Tensor, counts: WindowCounts, num_objectives: int) -> torch.Tensor:
    """The factors ``(b s P / N, ..., m s P / M)`` for one micro-batch's losses (``batch_counts = [b, m]``), the
    task loss last. Computed on the counts' device without a host sync."""
    device = batch_counts.device
    factor = float(counts.micro_batches * counts.processes)
    examples = counts.examples.to(device).clamp(min=1.0)
    labelled = counts.labelled.to(device).clamp(min=1.0)
    distill = (batch_counts[0].float() * factor) / examples
    task = batch_counts[1].float() * factor / labelled
    return torch.cat([distill.expand(num_objectives - 1), task.reshape(1)])
