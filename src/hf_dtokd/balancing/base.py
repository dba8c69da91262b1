"""What every trade-off method shares: the objectives' order, the log-loss shift and the raw-loss weights.

A balancer sees a vector of ``K`` named losses (the trainer's ``objective_names``; by default
``OBJECTIVES``: distillation first, task last). It holds ``pi``, a point of the
simplex over the objectives (what is logged and plotted), and turns it into the raw-loss weights
``w`` that the trainer applies: either to the losses before the single backward (weighted-loss
methods) or to the per-loss gradients at the end of the accumulation window (gradient methods,
``needs_gradients``). State lives on the training device; the closed-form methods need no host
sync, so the trainer's hot path stays asynchronous.

Hooks, each called by the trainer once per optimizer step and on every process alike:

* ``update_from_gram(raw_gram, losses)`` (gradient methods): set the weights from the window's
  ``K x K`` raw-gradient Gram and the window's process-averaged losses;
* ``combine_gradients(gradients, losses)`` (gradient methods): write the update into ``.grad``
  (default: the weighted sum of the per-loss gradients);
* ``observe_window(losses)``: any method, after the window's losses are known;
* ``update(losses_before, losses_after)`` (``needs_look_ahead``): after the optimizer step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from hf_dtokd.gradients.parameters import WindowGradients

OBJECTIVES: tuple[str, ...] = ("distill", "task")
RESCALE_RULES: tuple[str, ...] = ("famo", "none")


def shifted_losses(losses: torch.Tensor, min_loss: float, eps: float) -> torch.Tensor:
    """``L_i - min_loss + eps`` in float32: the argument of every log-loss (the edge cases of a zero loss).

    A distillation loss of exactly 0 (student equals teacher) stays strictly positive, so its log
    and the log-gradient ``g_i / (L_i - min_loss + eps)`` are finite.
    """
    return losses.float() - min_loss + eps


def raw_loss_weights(pi: torch.Tensor, shifted: torch.Tensor, rescale: str) -> torch.Tensor:
    """Raw-loss weights ``w_i`` such that ``sum_i w_i grad L_i`` is the balanced direction.

    The balanced direction on log-gradients is ``sum_i pi_i grad L_i / l_i`` (``l`` the shifted
    losses). With ``rescale="famo"`` it is divided by ``c = sum_i pi_i / l_i`` (FAMO and LOG_MGDA's
    rule), so that ``sum_i w_i = 1`` and the step has the size of an ordinary weighted KD loss;
    ``rescale="none"`` keeps the paper's literal direction.
    """
    weights = pi / shifted
    if rescale == "famo":
        return weights / weights.sum()
    if rescale == "none":
        return weights
    raise ValueError(f"unknown rescale rule {rescale!r}; valid values: {', '.join(RESCALE_RULES)}")


def distillation_only_weights(num_objectives: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Raw-loss weights for a window without labelled examples: the task (last) gets 0, the distillation
    objectives share 1 equally (``(1, 0)`` for the default two objectives)."""
    weights = torch.full((num_objectives,), 1.0 / (num_objectives - 1), device=device)
    weights[-1] = 0.0
    return weights


class Balancer(ABC):
    """A trade-off method: keeps ``pi`` over ``OBJECTIVES`` and turns it into raw-loss weights."""

    #: True when the method needs the per-loss gradients of the accumulation window.
    needs_gradients: bool = False
    #: True when the method updates itself from the losses measured after the optimizer step.
    needs_look_ahead: bool = False

    #: True when the method needs to know which parameters each objective reaches (``WindowGradients.reached``).
    needs_reachability: bool = False

    #: True when the method clips the per-loss gradients itself (``max_grad_norm``) before its update; it then
    #: reports the pre-clip norm in ``last_grad_norm`` and the Trainer's own clipping is skipped.
    handles_clipping: bool = False
    last_grad_norm: torch.Tensor | None = None

    #: True when the method computes the whole update (momenta included) and the trainer must step with
    #: momentum-free SGD (``p <- p - lr .grad``).
    owns_update: bool = False

    #: True when the method sets its weights from each window (every method but fixed weights and DOT, whose
    #: weights are alpha). A window without labelled examples then gets ``distillation_only_weights`` and
    #: leaves the method's state alone: its task loss is 0 by construction, not a trade-off to learn from.
    balances_each_window: bool = True

    #: The ``DTOKDConfig`` fields that set this method: reported in the model card, and refused (when set) with
    #: a method that does not read them.
    config_fields: tuple[str, ...] = ("temperature",)

    #: Empty for a method to compare against; for an experiment, why it is not one (the measurement). The
    #: config warns when it is chosen and the model card says so.
    experiment: str = ""

    #: The current point of the simplex, one entry per objective.
    pi: torch.Tensor

    @classmethod
    def from_config(cls, config: Any, num_objectives: int, **options: Any) -> Balancer:
        """The method as ``DTOKDConfig`` sets it (``config.method`` names it in the registry); its constructor
        checks the values. A custom method need not implement it: pass it as ``balancer=...``."""
        raise TypeError(
            f"{cls.__name__} is not built from a DTOKDConfig; pass an instance to the trainer (balancer=...)"
        )

    def __init__(self, num_objectives: int = len(OBJECTIVES)) -> None:
        if num_objectives < 2:
            raise ValueError(
                f"a trade-off needs at least two objectives, got num_objectives={num_objectives}"
            )
        self.num_objectives = num_objectives
        self.pi = torch.full((num_objectives,), 1.0 / num_objectives)
        self.nonfinite_events = torch.zeros((), dtype=torch.long)

    def to(self, device: torch.device | str) -> Balancer:
        self.pi = self.pi.to(device)
        self.nonfinite_events = self.nonfinite_events.to(device)
        return self

    def configure(self, gradients: WindowGradients, weight_decays: list[float], max_grad_norm: float) -> None:
        """Gradient methods: bind to the trainer's window gradients before the first step (default: nothing)."""
        return None

    @abstractmethod
    def loss_weights(self, losses: torch.Tensor) -> torch.Tensor:
        """Raw-loss weights (one per objective) for the current ``pi`` at these loss values."""

    def update_from_gram(self, raw_gram: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """Gradient methods (``needs_gradients``): set ``pi`` from the window's raw-gradient Gram."""
        raise NotImplementedError(f"{type(self).__name__} sets needs_gradients but has no update_from_gram")

    def combine_gradients(self, gradients: WindowGradients, losses: torch.Tensor) -> torch.Tensor:
        """Gradient methods: write ``sum_k w_k g_k`` into ``.grad``; return the weights used."""
        weights = self.loss_weights(losses)
        gradients.combine_into_grad(weights)
        return weights

    def observe_window(self, losses: torch.Tensor) -> None:
        """Called once per optimizer step with the window's process-averaged losses (default: nothing)."""
        return None

    def update(self, losses_before: torch.Tensor, losses_after: torch.Tensor) -> bool:
        """Look-ahead methods (``needs_look_ahead``): update from the losses before / after the step."""
        raise NotImplementedError(f"{type(self).__name__} sets needs_look_ahead but has no update")

    def state_dict(self) -> dict[str, Any]:
        return {"pi": self.pi.detach().cpu(), "nonfinite_events": self.nonfinite_events.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.pi.device
        self.pi = state["pi"].to(device)
        self.nonfinite_events = state["nonfinite_events"].to(device)


def check_two_objectives(method: str, num_objectives: int) -> None:
    """Methods whose weights are ``(alpha, 1 - alpha)`` refuse another number of objectives, naming the way out."""
    if num_objectives != 2:
        raise ValueError(
            f"method={method!r} weighs two objectives with alpha, but the trainer has {num_objectives}; pass "
            "balancer=FixedWeights(weights=[...]) (one weight per objective) or choose a K-objective method "
            "(dto, dto_amortized, famo, uncertainty, or a torchjd weighting)"
        )
