"""Where the trade-off meets the backward: one object per strategy, one interface.

Every micro-batch ends in exactly one ``accelerator.backward`` (DDP, DeepSpeed and gradient accumulation
hook into it). What happens around it depends on the method:

* ``ParameterGradients`` (gradient methods: exact DTO-KD, the torchjd weightings, DOT): the gradients of
  every objective but the task go into window buffers with ``autograd.grad``, the backward is the task
  loss's; at the window's end the buffers are averaged over processes, the balancer weighs their Gram
  and writes its update into ``.grad``. Under FSDP2, ``ShardedParameterGradients``: one backward per
  objective, each reduce-scattered into a local shard buffer, the Gram all-reduced.
* ``RepresentationGradients`` (Gram methods with ``gradient_placement="representation"``): the per-loss
  gradients at a layer every loss shares, this micro-batch's ``pi`` from their Gram, then the backward
  of the balanced loss.
* ``WeightedLoss`` (``fixed``, ``dto_amortized`` / ``famo``, ``uncertainty``): raw-loss weights from the
  current ``pi`` and the process-averaged losses, then the backward of the balanced loss.

The trainer calls ``open_window`` on a window's first micro-batch, ``backward`` on every micro-batch and
``close_window`` on its last; the maths stays in ``balancing/`` and ``gradients/``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hf_dtokd.balancing.base import distillation_only_weights
from hf_dtokd.balancing.gramian import GramianBalancer
from hf_dtokd.gradients.parameters import WindowGradients, objective_reach
from hf_dtokd.gradients.representation import (
    LOGITS,
    RepresentationCapture,
    check_shared_coordinates,
    representation_gradients,
    representation_gram,
    resolve_representation_layer,
)
from hf_dtokd.gradients.sharded import ShardedWindowGradients
from hf_dtokd.models.classification import classification_logits
from hf_dtokd.runtime.backends import backward, check_backend_support, inside_the_engine_backward, reshard
from hf_dtokd.trainer.window_means import WindowCounts

if TYPE_CHECKING:
    from hf_dtokd.trainer.engine import DistillationTrainer


@dataclass
class AccumulationWindow:
    """The state of one optimizer step's accumulation window (and what carries over to the next)."""

    is_open: bool = False
    model: nn.Module | None = None
    #: sum over micro-batches of the (exactly rescaled) losses / steps; process-averaged when closed
    losses: torch.Tensor | None = None
    #: examples / labelled examples of the window, counted when the Trainer prefetches it
    counts: WindowCounts | None = None
    #: (student inputs, teacher signal, labels, scales) per micro-batch, for the same-batch look-ahead
    batches: list[tuple[dict[str, Any], Any, torch.Tensor, torch.Tensor | None]] = field(default_factory=list)
    #: the previous window's losses (``look_ahead="next_batch"``)
    previous_losses: torch.Tensor | None = None
    #: no labelled example in the window (over every process), for a method that balances each window: the
    #: distillation objectives alone are applied and the balancer's state is left as it was
    distillation_only: bool = False

    def open(self, model: nn.Module, num_objectives: int, device: torch.device) -> None:
        self.is_open, self.model, self.batches = True, model, []
        self.losses = torch.zeros(num_objectives, device=device)

    def close(self) -> None:
        self.is_open, self.counts = False, None


class Placement(ABC):
    """One micro-batch's losses -> one backward; the window's end -> the balancer's update."""

    def __init__(self, trainer: DistillationTrainer) -> None:
        self.trainer = trainer

    #: The layer the per-loss gradients are taken at (representation placement only).
    layer: str | None = None
    #: The window's per-loss gradient buffers (parameter placement only).
    gradients: WindowGradients | None = None

    def open_window(self, model: nn.Module) -> None:
        """The window's first micro-batch is about to run (default: nothing)."""
        return None

    def capture(self) -> Callable[[bool], None]:
        """Switch the representation capture on / off around the student's forward (default: no capture)."""
        return lambda active: None

    @property
    def needs_reach(self) -> bool:
        """Whether the trainer records which parameters each loss reaches (``mark_reached``) every micro-batch."""
        return self.trainer.balancer.needs_reachability

    def mark_reached(self, losses: torch.Tensor) -> None:
        """Record which parameters each loss reaches (methods with ``needs_reachability``)."""
        raise ValueError(
            f"{type(self.trainer.balancer).__name__} needs the per-loss gradients at the parameters; use "
            "gradient_placement='parameters'"
        )

    @abstractmethod
    def backward(self, losses: torch.Tensor, outputs: Any, steps: int) -> torch.Tensor:
        """Run the micro-batch's backward; return its share of the logged balanced loss."""

    #: True when ``pi`` is set (and recorded) per micro-batch rather than once per window.
    pi_per_micro_batch: bool = False

    def close_window(self, window_losses: torch.Tensor, logged: torch.Tensor, skip: bool) -> torch.Tensor:
        """The window's last micro-batch ran: the balancer's window update, if any (default: none)."""
        return logged


class ParameterGradients(Placement):
    """Per-loss gradients at the student's parameters, weighed once per window (see module)."""

    def open_window(self, model: nn.Module) -> None:
        trainer = self.trainer
        if self.gradients is None:
            self.gradients = self.window_gradients(model)
            if trainer.args.gram_parameters == "student":
                left_out = {id(p) for p in trainer.training_only_parameters()}
                self.gradients.restrict_gram([id(p) not in left_out for p in self.gradients.parameters])
            self.gradients.one_loss_rule = trainer.args.one_loss_parameters
            trainer.balancer.configure(
                self.gradients, trainer.weight_decays(self.gradients), trainer.args.max_grad_norm
            )
        self.gradients.reset()

    def window_gradients(self, model: nn.Module) -> WindowGradients:
        """The window's per-loss gradient buffers: every objective but the task (whose gradient is ``.grad``)."""
        return WindowGradients(model.parameters(), len(self.trainer.objective_names) - 1)

    def backward(self, losses: torch.Tensor, outputs: Any, steps: int) -> torch.Tensor:
        trainer = self.trainer
        if trainer.args.batched_gradients:
            self.gradients.accumulate_batched(losses[:-1] / steps)
        else:
            for index in range(len(losses) - 1):
                self.gradients.accumulate(index, losses[index] / steps)
        backward(trainer.accelerator, losses[-1] / steps)
        return torch.zeros((), device=losses.device)

    @property
    def needs_reach(self) -> bool:
        args = self.trainer.args
        return (
            self.trainer.balancer.needs_reachability
            or args.gram_parameters == "shared"
            or args.one_loss_parameters == "own"
        )

    def mark_reached(self, losses: torch.Tensor) -> None:
        """Which parameters each loss reaches, from the graph (a zero gradient is not "unreached")."""
        self.gradients.mark_reached(objective_reach(losses, self.gradients.parameters))

    def close_window(self, window_losses: torch.Tensor, logged: torch.Tensor, skip: bool) -> torch.Tensor:
        trainer = self.trainer
        self.gradients.all_reduce_mean(trainer.accelerator)
        if trainer.args.gram_parameters == "shared":
            self._restrict_to_shared()
        gram = self.gradients.gram_with_grad()
        if trainer.window.distillation_only:
            if not skip:
                weights = distillation_only_weights(window_losses.numel(), window_losses.device)
                self.gradients.combine_into_grad(weights)
                logged = (weights * window_losses).sum()
                trainer.tradeoff_log.record_weights(weights)
            trainer.tradeoff_log.record_gradient_diagnostics(gram)
            return logged
        trainer.balancer.update_from_gram(gram, window_losses)
        if not skip:
            weights = trainer.balancer.combine_gradients(self.gradients, window_losses)
            logged = (weights.to(window_losses.device) * window_losses).sum()
            trainer.tradeoff_log.record_weights(weights)
        trainer.tradeoff_log.record_gradient_diagnostics(gram)
        return logged

    def _restrict_to_shared(self) -> None:
        """``gram_parameters="shared"``: the Gram over the parameters every objective reached in this window
        (the reach is structural, so the same on every process; the mask is reset only when it changes)."""
        shared = self.gradients.shared_parameters()
        if shared == self.gradients.gram_included:
            return
        if not any(shared):
            names = ", ".join(self.trainer.objective_names)
            raise ValueError(
                f"gram_parameters='shared': no trainable parameter is reached by every objective ({names}) in this "
                "window, so there is no shared trunk to balance on; use gram_parameters='all'"
            )
        self.gradients.restrict_gram(shared)


class ShardedParameterGradients(ParameterGradients):
    """``ParameterGradients`` for an FSDP2-sharded student: one backward per objective, sharded buffers, the
    Gram all-reduced (``gradients/sharded.py``)."""

    def window_gradients(self, model: nn.Module) -> WindowGradients:
        """A local-shard buffer per objective, the task's included (``gradients/sharded.py``)."""
        reshard(model)  # the sharded parameters, even after a no-grad forward left the root gathered
        return ShardedWindowGradients(
            model.parameters(), len(self.trainer.objective_names), self.trainer.accelerator
        )

    @property
    def needs_reach(self) -> bool:
        return False  # refused at start: the graph's leaves are the gathered parameters

    def backward(self, losses: torch.Tensor, outputs: Any, steps: int) -> torch.Tensor:
        trainer = self.trainer
        # a deferred reduction (the Trainer's no_sync between micro-batches) would sum the objectives together
        trainer.window.model.set_requires_gradient_sync(True)
        last = len(losses) - 1
        for index in range(len(losses)):
            backward(trainer.accelerator, losses[index] / steps, retain_graph=index < last)
            self.gradients.take_gradients(index)
        return torch.zeros((), device=losses.device)


class RepresentationGradients(Placement):
    """Per-loss gradients at a shared layer's output, ``pi`` per micro-batch (see module)."""

    pi_per_micro_batch = True

    def __init__(self, trainer: DistillationTrainer, student: nn.Module, layer: str) -> None:
        super().__init__(trainer)
        self.layer = layer
        self._capture = None if layer == LOGITS else RepresentationCapture(student, layer)
        self._coordinates_checked = False

    def capture(self) -> Callable[[bool], None]:
        if self._capture is None:
            return super().capture()

        def switch(active: bool) -> None:
            self._capture.active = active

        return switch

    def backward(self, losses: torch.Tensor, outputs: Any, steps: int) -> torch.Tensor:
        trainer = self.trainer
        if trainer.window.distillation_only:
            if self._capture is not None:
                self._capture.take()  # drop this forward's capture
            trainer.tradeoff_log.record_pi(trainer.balancer.pi)
            weights = distillation_only_weights(losses.numel(), losses.device)
            trainer.tradeoff_log.record_weights(weights)
            backward(trainer.accelerator, (weights * losses).sum() / steps)
            return (weights * losses.detach()).sum() / steps
        representation = classification_logits(outputs) if self._capture is None else self._capture.take()
        with inside_the_engine_backward(trainer.window.model):
            gradients = representation_gradients(losses, representation, trainer.objective_names)
        if not self._coordinates_checked:  # once: a host sync
            check_shared_coordinates(gradients, trainer.objective_names, self.layer)
            self._coordinates_checked = True
        gram = representation_gram(gradients, trainer.accelerator)
        global_losses = trainer.reduce_mean(losses.detach())
        trainer.balancer.update_from_gram(gram, global_losses)
        trainer.tradeoff_log.record_gradient_diagnostics(gram)
        trainer.tradeoff_log.record_pi(trainer.balancer.pi)
        weights = trainer.balancer.loss_weights(global_losses).to(losses.device)
        trainer.tradeoff_log.record_weights(weights)
        backward(trainer.accelerator, (weights * losses).sum() / steps)
        return (weights * losses.detach()).sum() / steps


class WeightedLoss(Placement):
    """Raw-loss weights from the current ``pi`` and one backward of the weighted sum (see module)."""

    def backward(self, losses: torch.Tensor, outputs: Any, steps: int) -> torch.Tensor:
        trainer = self.trainer
        if trainer.window.distillation_only:
            weights = distillation_only_weights(losses.numel(), losses.device)
        else:
            weights = trainer.balancer.loss_weights(trainer.reduce_mean(losses.detach()))
        trainer.tradeoff_log.record_weights(weights)
        backward(trainer.accelerator, (weights * losses).sum() / steps)
        return (weights * losses.detach()).sum() / steps


def build_placement(trainer: DistillationTrainer, student: nn.Module, layer: str | None) -> Placement:
    """The strategy for the trainer's balancer: representation placement when a layer was resolved."""
    if layer is not None:
        return RepresentationGradients(trainer, student, layer)
    if trainer.balancer.needs_gradients:
        sharded = getattr(trainer.accelerator, "is_fsdp2", False)
        return ShardedParameterGradients(trainer) if sharded else ParameterGradients(trainer)
    return WeightedLoss(trainer)


def representation_layer(trainer: DistillationTrainer, student: nn.Module) -> str | None:
    """For a gradient method: checks that it runs on this backend; with ``gradient_placement="representation"``
    the layer the per-loss gradients are taken at (checked), else None."""
    args, balancer = trainer.args, trainer.balancer
    check_backend_support(
        trainer.method_name,
        args.gradient_placement,
        balancer.needs_gradients,
        balancer.owns_update,
        fsdp=trainer.is_fsdp_enabled,
        deepspeed=trainer.is_deepspeed_enabled,
        fp16=args.fp16,
        fsdp2=trainer.distillation_teacher.fsdp2,
        gram_parameters=args.gram_parameters,
        one_loss_parameters=args.one_loss_parameters,
        batched_gradients=args.batched_gradients,
    )
    if args.batched_gradients and len(trainer.objective_names) < 3:
        raise ValueError(
            f"batched_gradients batches the per-loss gradient calls of all objectives but the task; with "
            f"{len(trainer.objective_names)} objectives there is one call, nothing to batch. Leave it False"
        )
    if args.gradient_placement != "representation":
        return None
    if not isinstance(balancer, GramianBalancer):
        raise ValueError(
            f"gradient_placement='representation' needs a Gram method (a GramianBalancer); "
            f"{type(balancer).__name__} combines the per-loss parameter gradients itself. Use "
            "gradient_placement='parameters'"
        )
    return resolve_representation_layer(
        student,
        args.representation_layer,
        trainer.task.losses_from_logits,
        trainer.task.default_representation_layer(student),
    )
