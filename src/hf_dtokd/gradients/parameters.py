"""Per-loss gradients at the student's parameters, accumulated over one accumulation window.

Gradient methods (exact DTO-KD, the torchjd weightings, DOT) need one gradient per objective.
To keep one ``accelerator.backward`` per micro-batch (DDP, DeepSpeed and gradient accumulation
all hook into it), the trainer takes the gradients of the first ``K - 1`` objectives with
``torch.autograd.grad`` into the flat buffers kept here, and lets the ordinary backward put the
last objective's gradient (the task loss) into ``.grad``. At the window's end:

* the buffers are averaged over processes (``autograd.grad`` is never all-reduced by DDP), so all
  ``K`` gradients are the global-batch gradients and every rank computes the same weights;
* the ``K x K`` Gram of the raw gradients is formed (float32 dots, summed in float64);
* ``.grad`` is overwritten with ``sum_k w_k g_k`` for the Trainer's clipping and step.

``K`` backward passes per micro-batch, no more; ``K - 1`` parameter-sized float32 buffers. With
``K > 2`` the ``K - 1`` calls can be one batched VJP (``accumulate_batched``: ``autograd.grad`` with
``is_grads_batched``, i.e. vmap over the backward), which falls back to separate calls when an
operation has no batching rule.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import torch
from accelerate import Accelerator

logger = logging.getLogger(__name__)


class WindowGradients:
    """Flat float32 buffers, one per objective but the last, each summing that loss's gradient over the window.

    ``reached[k][j]`` records whether objective ``k`` (all ``K``, the task included) reached parameter ``j``
    during the window, read off the autograd graph by ``objective_reach`` and recorded with
    ``mark_reached`` (a gradient of zeros is not "unreached": backpropagating one entry of a stacked loss
    vector hands every parameter of the other losses a zero gradient). DOT's reference rule treats
    parameters reached by one loss only differently.
    """

    def __init__(self, parameters: Iterable[torch.nn.Parameter], num_buffers: int = 1) -> None:
        self.parameters = [p for p in parameters if p.requires_grad]
        if not self.parameters:
            raise ValueError(
                "the student has no trainable parameter (requires_grad=True); nothing to distil into"
            )
        if num_buffers < 1:
            raise ValueError(f"WindowGradients needs at least one buffer, got num_buffers={num_buffers}")
        sizes = [p.numel() for p in self.parameters]
        self.buffers = torch.zeros(
            num_buffers, sum(sizes), dtype=torch.float32, device=self.parameters[0].device
        )
        self.views = [
            [v.view_as(p) for v, p in zip(buffer.split(sizes), self.parameters)] for buffer in self.buffers
        ]
        self.columns = list(self.buffers.split(sizes, dim=1))  # (num_buffers, numel) views per parameter
        self.reached = [[False] * len(self.parameters) for _ in range(num_buffers + 1)]
        self.batched_unsupported = False
        self.gram_included = [True] * len(self.parameters)
        #: ``"own"``: a parameter reached by one objective alone gets that objective's gradient at weight 1 in
        #: ``combine_into_grad`` (``"weighted"``: the applied weight, like every parameter)
        self.one_loss_rule = "weighted"

    @property
    def num_objectives(self) -> int:
        """Objectives covered: one per buffer plus the one whose gradient sits in ``.grad``."""
        return self.buffers.shape[0] + 1

    def reset(self) -> None:
        self.buffers.zero_()
        self.reached = [[False] * len(self.parameters) for _ in range(self.num_objectives)]

    def mark_reached(self, reach: Sequence[Sequence[bool]]) -> None:
        """Record (OR over the window's micro-batches) which parameters each objective reached."""
        if len(reach) != self.num_objectives:
            raise ValueError(f"expected reach flags for {self.num_objectives} objectives, got {len(reach)}")
        for row, flags in zip(self.reached, reach):
            for j, flag in enumerate(flags):
                row[j] = row[j] or bool(flag)

    def accumulate(self, index: int, loss: torch.Tensor) -> None:
        """Add ``grad loss`` into buffer ``index``, keeping the graph for the passes that follow."""
        grads = torch.autograd.grad(loss, self.parameters, retain_graph=True, allow_unused=True)
        for view, grad in zip(self.views[index], grads):
            if grad is not None:
                view.add_(grad)

    def accumulate_batched(self, losses: torch.Tensor) -> bool:
        """Add ``grad losses[k]`` into buffer ``k`` for every ``k`` in one batched VJP.

        Returns False (after a one-time warning) and uses one ``autograd.grad`` per loss when the
        backward cannot be batched; the result is the same either way.
        """
        if len(losses) != self.buffers.shape[0]:
            raise ValueError(f"expected {self.buffers.shape[0]} losses, got {len(losses)}")
        if not self.batched_unsupported:
            basis = torch.eye(len(losses), dtype=losses.dtype, device=losses.device)
            try:
                grads = torch.autograd.grad(
                    losses,
                    self.parameters,
                    grad_outputs=basis,
                    retain_graph=True,
                    allow_unused=True,
                    is_grads_batched=True,
                )
            except RuntimeError as error:  # an operation without a vmap batching rule in the backward
                self.batched_unsupported = True
                logger.warning(
                    "batched per-loss gradients unsupported here (%s); using one call per loss", error
                )
            else:
                for j, grad in enumerate(grads):
                    if grad is not None:
                        self.columns[j].add_(grad.reshape(len(losses), -1))
                return True
        for index, loss in enumerate(losses):
            self.accumulate(index, loss)
        return False

    def all_reduce_mean(self, accelerator: Accelerator) -> None:
        """Average the buffers over processes: the same operation DDP applies to ``.grad``."""
        if accelerator.num_processes > 1:
            self.buffers.copy_(accelerator.reduce(self.buffers, reduction="mean"))

    def restrict_gram(self, included: Sequence[bool]) -> None:
        """Compute the Gram over the parameters flagged True only (``gram_parameters='student'``)."""
        if len(included) != len(self.parameters):
            raise ValueError(f"expected {len(self.parameters)} flags, got {len(included)}")
        if not any(included):
            raise ValueError("the Gram would cover no parameter: at least one parameter must be included")
        self.gram_included = [bool(flag) for flag in included]

    def gram_with_grad(self) -> torch.Tensor:
        """The ``K x K`` Gram of (buffer_0, ..., buffer_{K-2}, ``.grad``) over the included parameters, float64."""
        m = self.buffers.shape[0]
        gram = torch.zeros(m + 1, m + 1, dtype=torch.float64, device=self.buffers.device)
        if all(self.gram_included):
            gram[:m, :m] = (self.buffers @ self.buffers.T).double()
        else:
            for columns, included in zip(self.columns, self.gram_included):
                if included:
                    gram[:m, :m] += (columns @ columns.T).double()
        for columns, param, included in zip(self.columns, self.parameters, self.gram_included):
            if included and param.grad is not None:
                grad = param.grad.reshape(-1).float()
                cross = (columns @ grad).double()
                gram[:m, m] += cross
                gram[m, :m] += cross
                gram[m, m] += torch.dot(grad, grad).double()
        return gram

    def shared_parameters(self) -> list[bool]:
        """Per parameter: reached by every objective during the window (see ``mark_reached``)."""
        return [all(row[j] for row in self.reached) for j in range(len(self.parameters))]

    def only_objective(self, j: int) -> int | None:
        """The one objective that reached parameter ``j`` during the window, or None (several, or none)."""
        reaching = [k for k, row in enumerate(self.reached) if row[j]]
        return reaching[0] if len(reaching) == 1 else None

    def combine_into_grad(self, weights: torch.Tensor) -> None:
        """``.grad <- w_{K-1} * .grad + sum_k w_k * buffer_k`` in the parameters' dtype; with
        ``one_loss_rule="own"`` a parameter one objective alone reached takes that objective's gradient at
        weight 1."""
        if weights.numel() != self.num_objectives:
            raise ValueError(f"expected {self.num_objectives} weights, got {weights.numel()}")
        buffer_weights, grad_weight = weights[:-1].float(), weights[-1]
        own = self.one_loss_rule == "own"
        for j, param in enumerate(self.parameters):
            only = self.only_objective(j) if own else None
            if only is not None:
                if only < len(self.views):  # a buffered objective: its gradient replaces .grad
                    param.grad = self.views[only][j].detach().clone().to(param.dtype)
                continue  # the task's own gradient already is .grad (weight 1)
            combined = sum(w * views[j] for w, views in zip(buffer_weights, self.views))
            if param.grad is None:
                param.grad = combined.to(param.dtype)
            else:
                param.grad.mul_(grad_weight.to(param.grad.dtype)).add_(combined.to(param.grad.dtype))


def objective_reach(losses: torch.Tensor, parameters: Sequence[torch.Tensor]) -> list[list[bool]]:
    """Which of ``parameters`` each objective's graph reaches, for ``losses = torch.stack([L_1, ..., L_K])``.

    Hand-written because autograd answers a different question: ``autograd.grad(losses[k], ...,
    allow_unused=True)`` returns zeros, not None, for the parameters of the other objectives (the stack's
    backward hands every input a gradient). The walk starts at each input of the stack's backward node and
    follows ``next_functions`` down to the parameters' ``AccumulateGrad`` nodes; it runs on the graph
    already built, with no backward pass.
    """
    node = losses.grad_fn
    count = losses.numel()
    if node is None:
        return [[False] * len(parameters) for _ in range(count)]
    inputs = node.next_functions
    if type(node).__name__ != "StackBackward0" or len(inputs) != count:
        raise ValueError(
            f"the objective losses must be built as torch.stack([loss_1, ..., loss_K]) of scalar losses (got a "
            f"tensor made by {type(node).__name__}), so that the parameters each loss reaches can be told apart; "
            "return torch.stack([...]) from compute_objective_losses / objective_losses"
        )
    index = {id(p): j for j, p in enumerate(parameters)}
    reach = []
    for root, _ in inputs:
        flags = [False] * len(parameters)
        seen: set[int] = set()
        pending = [root] if root is not None else []
        kept = []  # keep the node wrappers alive while their ids are in ``seen``
        while pending:
            function = pending.pop()
            if id(function) in seen:
                continue
            seen.add(id(function))
            kept.append(function)
            variable = getattr(function, "variable", None)  # AccumulateGrad: a leaf tensor
            if variable is not None and id(variable) in index:
                flags[index[id(variable)]] = True
            pending.extend(child for child, _ in function.next_functions if child is not None)
        reach.append(flags)
    return reach
