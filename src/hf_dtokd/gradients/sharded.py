"""Per-loss gradients of an FSDP2-sharded student: every rank holds its shard of each, the Gram is all-reduced.

Exact DTO-KD (and the torchjd weightings) need the ``K x K`` Gram of the per-loss gradients over every
parameter. Under FSDP2 no rank holds a whole gradient, but the Gram is a sum over disjoint shards::

    G_ij = sum_r <g_i^(r), g_j^(r)>        (g^(r): rank r's shard, already averaged over ranks)

so each rank forms its local ``K x K`` products and one all-reduce (sum) of ``K^2`` scalars gives every rank the
Gram of the global-batch gradients (the gradients themselves cost one reduce-scatter per objective per
micro-batch).

The per-loss shards come from FSDP2 itself: ``autograd.grad`` cannot be used (the graph holds the gathered
parameters, not the sharded ones, and FSDP2 reduce-scatters only in a backward), so each micro-batch runs one
backward per objective on the retained graph; FSDP2 gathers the parameters again for each and reduce-scatters
each gradient into the sharded ``.grad``, which is moved into that objective's buffer (one local shard buffer per
objective, ``K / P`` parameter-sized buffers per rank). Gradient accumulation: every micro-batch reduce-scatters
(the placement turns FSDP2's deferred reduction off), since a deferred one would mix the objectives. At the
window's end the update ``sum_k w_k g_k`` is written into each parameter's sharded ``.grad``.

Which parameters each loss reaches cannot be read off the graph here (its leaves are the gathered tensors), so
``gram_parameters="shared"`` and ``one_loss_parameters="own"`` are refused under FSDP2 (``runtime/backends.py``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from accelerate import Accelerator

from hf_dtokd.gradients.parameters import WindowGradients


def local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP2 parameter or gradient (a DTensor); any other tensor as it is."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


class ShardedWindowGradients(WindowGradients):
    """One local-shard float32 buffer per objective (the task's included), summed over the window.

    The interface is ``WindowGradients``' (the balancers and the placement use it unchanged), except that the
    task's gradient sits in the last buffer instead of ``.grad`` and ``take_gradients`` moves a backward's
    sharded ``.grad`` into a buffer.
    """

    def __init__(
        self, parameters: Iterable[torch.nn.Parameter], num_objectives: int, accelerator: Accelerator
    ) -> None:
        self.parameters = [p for p in parameters if p.requires_grad]
        if not self.parameters:
            raise ValueError(
                "the student has no trainable parameter (requires_grad=True); nothing to distil into"
            )
        shards = [local_shard(p) for p in self.parameters]
        sizes = [shard.numel() for shard in shards]
        self.buffers = torch.zeros(
            num_objectives, sum(sizes), dtype=torch.float32, device=self.parameters[0].device
        )
        self.views = [[v.view_as(s) for v, s in zip(buffer.split(sizes), shards)] for buffer in self.buffers]
        self.columns = list(self.buffers.split(sizes, dim=1))
        self.reached = [[False] * len(self.parameters) for _ in range(num_objectives)]
        self.batched_unsupported = True
        self.gram_included = [True] * len(self.parameters)
        self.one_loss_rule = "weighted"
        self.accelerator = accelerator

    @property
    def num_objectives(self) -> int:
        return self.buffers.shape[0]

    def take_gradients(self, index: int) -> None:
        """Add the sharded ``.grad`` a backward just left into buffer ``index`` and clear it for the next one."""
        for view, param in zip(self.views[index], self.parameters):
            if param.grad is not None:
                view.add_(local_shard(param.grad).reshape(view.shape))
                param.grad = None

    def all_reduce_mean(self, accelerator: Accelerator) -> None:
        """Nothing to do: FSDP2's reduce-scatter already averaged each shard over the ranks."""
        return None

    def gram_with_grad(self) -> torch.Tensor:
        """The ``K x K`` Gram of the objectives' gradients over the included parameters, float64: the local
        shards' products summed over ranks (one all-reduce of ``K^2`` numbers)."""
        k = self.num_objectives
        gram = torch.zeros(k, k, dtype=torch.float64, device=self.buffers.device)
        if all(self.gram_included):
            gram += (self.buffers @ self.buffers.T).double()
        else:
            for columns, included in zip(self.columns, self.gram_included):
                if included:
                    gram += (columns @ columns.T).double()
        return self.sum_over_ranks(gram)

    def sum_over_ranks(self, gram: torch.Tensor) -> torch.Tensor:
        """The local shards' Gram summed over every rank (the shards are disjoint)."""
        if self.accelerator.num_processes == 1:
            return gram
        return self.accelerator.reduce(gram, reduction="sum")

    def combine_into_grad(self, weights: torch.Tensor) -> None:
        """Each parameter's sharded ``.grad`` <- ``sum_k w_k g_k`` on this rank's shard, in its dtype."""
        if weights.numel() != self.num_objectives:
            raise ValueError(f"expected {self.num_objectives} weights, got {weights.numel()}")
        from torch.distributed.tensor import DTensor

        weights = weights.to(self.buffers.device, torch.float32)
        for j, param in enumerate(self.parameters):
            combined = sum(w * views[j] for w, views in zip(weights, self.views)).to(param.dtype)
            if isinstance(param, DTensor):
                combined = DTensor.from_local(
                    combined, param.device_mesh, param.placements, shape=param.shape, stride=param.stride()
                )
            param.grad = combined
