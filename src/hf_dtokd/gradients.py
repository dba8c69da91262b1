"""Per-loss gradients at the student's parameters, accumulated over one accumulation window.

The exact trade-off needs the two per-loss gradients. To keep one ``accelerator.backward`` per
micro-batch (DDP, DeepSpeed and gradient accumulation all hook into it), the trainer takes the
distillation gradient with ``torch.autograd.grad`` into the flat buffer kept here, and lets the
ordinary backward put the task gradient into ``.grad``. At the window's end:

* the buffer is averaged over processes (``autograd.grad`` is never all-reduced by DDP), so both
  gradients are the global-batch gradients and every rank computes the same ``pi``;
* the 2x2 Gram of the raw gradients is formed (float32 dots, summed in float64);
* ``.grad`` is overwritten with ``w_t * .grad + w_d * buffer`` for the Trainer's clipping and step.

Two backward passes per micro-batch, no third; one parameter-sized float32 buffer.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from accelerate import Accelerator


class WindowGradients:
    """A flat float32 buffer holding one loss's gradient summed over the accumulation window."""

    def __init__(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        self.parameters = [p for p in parameters if p.requires_grad]
        if not self.parameters:
            raise ValueError(
                "the student has no trainable parameter (requires_grad=True); nothing to distil into"
            )
        sizes = [p.numel() for p in self.parameters]
        self.buffer = torch.zeros(sum(sizes), dtype=torch.float32, device=self.parameters[0].device)
        self.views = [v.view_as(p) for v, p in zip(self.buffer.split(sizes), self.parameters)]

    def reset(self) -> None:
        self.buffer.zero_()

    def accumulate(self, loss: torch.Tensor) -> None:
        """Add ``grad loss`` into the buffer, keeping the graph for the backward that follows."""
        grads = torch.autograd.grad(loss, self.parameters, retain_graph=True, allow_unused=True)
        for view, grad in zip(self.views, grads):
            if grad is not None:
                view.add_(grad)

    def all_reduce_mean(self, accelerator: Accelerator) -> None:
        """Average the buffer over processes: the same operation DDP applies to ``.grad``."""
        if accelerator.num_processes > 1:
            self.buffer.copy_(accelerator.reduce(self.buffer, reduction="mean"))

    def gram_with_grad(self) -> torch.Tensor:
        """``[[<b, b>, <b, g>], [<g, b>, <g, g>]]`` for the buffer ``b`` and the parameters' ``.grad`` ``g``."""
        bb = torch.zeros((), dtype=torch.float64, device=self.buffer.device)
        bg, gg = bb.clone(), bb.clone()
        for view, param in zip(self.views, self.parameters):
            bb += torch.dot(view.reshape(-1), view.reshape(-1)).double()
            if param.grad is not None:
                grad = param.grad.reshape(-1).float()
                bg += torch.dot(view.reshape(-1), grad).double()
                gg += torch.dot(grad, grad).double()
        return torch.stack([torch.stack([bb, bg]), torch.stack([bg, gg])])

    def combine_into_grad(self, buffer_weight: torch.Tensor, grad_weight: torch.Tensor) -> None:
        """``.grad <- grad_weight * .grad + buffer_weight * buffer`` in the parameters' dtype."""
        for view, param in zip(self.views, self.parameters):
            if param.grad is None:
                param.grad = (buffer_weight * view).to(param.dtype)
            else:
                param.grad.mul_(grad_weight.to(param.grad.dtype)).add_(
                    (buffer_weight * view).to(param.grad.dtype)
                )
