"""Exact window means under gradient accumulation and data parallelism, whatever the micro-batch counts.

The losses are computed per micro-batch as means: the distillation losses over the micro-batch's ``b``
examples, the task loss over its ``m`` labelled ones (label ``-100`` marks an unlabelled example). The
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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator

from hf_dtokd.losses import labelled_mask


@dataclass
class WindowCounts:
    """A window's example and labelled-example totals (over the counted processes) and its shape."""

    examples: torch.Tensor  # N, float32 scalar (integers exact up to 2^24 per window)
    labelled: torch.Tensor  # M
    micro_batches: int  # s
    processes: int  # P


def count_window(
    batch_samples: Sequence[Any], accelerator: Accelerator, across_processes: bool
) -> WindowCounts | None:
    """Totals of the window's batches (None when a batch has no ``labels`` tensor: the step names that)."""
    counts: torch.Tensor | None = None
    for batch in batch_samples:
        labels = batch.get("labels") if isinstance(batch, dict) else None
        if not isinstance(labels, torch.Tensor):
            return None
        if counts is None:  # on the labels' device (the prepared loader's): no host sync
            counts = torch.zeros(2, device=labels.device)
        counts[0] += labels.shape[0]
        counts[1] += labelled_mask(labels).sum()
    if counts is None:
        return None
    processes = accelerator.num_processes if across_processes else 1
    if processes > 1:
        counts = accelerator.reduce(counts.to(accelerator.device), reduction="sum")
    return WindowCounts(counts[0], counts[1], len(batch_samples), processes)


def micro_batch_scales(labels: torch.Tensor, counts: WindowCounts, num_objectives: int) -> torch.Tensor:
    """The factors ``(b s P / N, ..., m s P / M)`` for one micro-batch's losses, the task loss last.

    Computed on the labels' device without a host sync."""
    factor = float(counts.micro_batches * counts.processes)
    examples = counts.examples.to(labels.device).clamp(min=1.0)
    labelled = counts.labelled.to(labels.device).clamp(min=1.0)
    distill = (labels.shape[0] * factor) / examples
    task = labelled_mask(labels).sum().float() * factor / labelled
    return torch.cat([distill.expand(num_objectives - 1), task.reshape(1)])
