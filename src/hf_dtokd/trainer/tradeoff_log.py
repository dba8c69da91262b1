"""The trade-off's logged figures: what each optimizer step (or micro-batch) records, and what a log shows.

A trainer and its placement record, per step: the window's losses (``<name>_loss``), ``pi_<name>``, the raw-loss
weights applied (``weight_<name>``) and, for gradient methods, each objective's gradient cosine and norm ratio
against the task (``grad_cos``, ``grad_norm_ratio``). At each of the Trainer's logs the values since the last one
become interval means, the cosines also a conflict rate and their minimum (``conflict_figures``), and the
per-step cosines and weights go to the step trace (``tradeoff_steps.json`` and the plot). Signal trainers
record the parts of a grouped objective through ``record``.

Checkpoints hold the trace, the step it starts at and the values not logged yet (``state_dict``), so a resumed
run logs and plots what the uninterrupted one does.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch

from hf_dtokd.hub.step_trace import StepTrace


class TradeoffLog:
    """The per-step values between two logs, and the step trace, of one trainer's objectives."""

    def __init__(self, objective_names: Sequence[str]) -> None:
        self.objective_names = tuple(objective_names)
        self.values: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.trace = StepTrace()
        #: the optimizer step the values since the last log start at (None before a train() call's first step)
        self.trace_from_step: int | None = None

    def record(self, name: str, value: torch.Tensor) -> None:
        """One step's (or micro-batch's) value of a logged figure."""
        self.values[name].append(value)

    def record_losses(self, losses: torch.Tensor) -> None:
        for index, name in enumerate(self.objective_names):
            self.record(f"{name}_loss", losses[index])

    def record_pi(self, pi: torch.Tensor) -> None:
        for index, name in enumerate(self.objective_names[:-1]):
            self.record(f"pi_{name}", pi[index])

    def record_weights(self, weights: torch.Tensor) -> None:
        """The raw-loss weights applied to each objective (``weight_<name>``): what pi becomes once divided by
        the losses and rescaled, i.e. what the update really gives each loss."""
        for index, name in enumerate(self.objective_names):
            self.record(f"weight_{name}", weights[index].detach().float())

    def record_gradient_diagnostics(self, gram: torch.Tensor) -> None:
        """Gradient conflict (cosine) and dominance (norm ratio) of each objective against the task, from the
        Gram; undefined (NaN, left out of the logged mean) when a gradient is zero, e.g. a micro-batch whose
        examples are all unlabelled has no task gradient."""
        norms = gram.diagonal().sqrt()
        task = len(self.objective_names) - 1
        undefined = torch.full_like(norms[task], float("nan"))
        for index, name in enumerate(self.objective_names[:-1]):
            suffix = "" if name == "distill" else f"_{name}"
            both = norms[index] * norms[task]
            self.record(f"grad_cos{suffix}", torch.where(both > 0, gram[index, task] / both, undefined))
            self.record(
                f"grad_norm_ratio{suffix}",
                torch.where(norms[task] > 0, norms[index] / norms[task], undefined),
            )

    def start(self, global_step: int) -> None:
        """A train() call's first step: the trace of the values to come starts here (a resumed run: its step)."""
        if self.trace_from_step is None:
            self.trace_from_step = global_step

    def flush_into(self, logs: dict[str, float], global_step: int) -> bool:
        """Add the interval's figures to ``logs`` and start the next interval; False when nothing was recorded."""
        if not self.values:
            return False
        first_step = global_step if self.trace_from_step is None else self.trace_from_step
        self.trace_from_step = global_step
        for name, values in self.values.items():
            stacked = torch.stack([v.detach().double() for v in values])
            if name.startswith(("grad_cos", "weight_")):  # the per-step values behind the interval mean
                self.trace.add(name, first_step, global_step, stacked)
            # gradient diagnostics are NaN where undefined (a zero gradient); losses, pi and weights stay plain means
            logs[name] = (stacked.nanmean() if name.startswith("grad_") else stacked.mean()).item()
            if name.startswith("grad_cos"):
                logs.update(conflict_figures(name, stacked))
        self.values.clear()
        return True

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's keys (``step_trace``, ``trace_from_step``, ``pending_metrics``; unchanged since the
        checkpoints that first held them)."""
        return {
            "step_trace": self.trace.state_dict(),
            "trace_from_step": self.trace_from_step,
            "pending_metrics": {
                name: torch.stack([v.detach().double() for v in values]).cpu()
                for name, values in self.values.items()
                if values
            },
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        """Restore from a checkpoint's state; one written before the trace was saved has none of the keys."""
        if "step_trace" not in state:
            return
        self.trace.load_state_dict(state["step_trace"])
        self.trace_from_step = state["trace_from_step"]
        self.values.clear()
        for name, values in state["pending_metrics"].items():
            self.values[name] = list(values.to(device).unbind())


def conflict_figures(name: str, cosines: torch.Tensor) -> dict[str, float]:
    """Per-step conflict over a logging interval, from the cosines of each optimizer step (or micro-batch, for
    the representation placement): ``grad_conflict_rate<suffix>`` = share of the defined cosines that are
    negative, ``grad_cos_min<suffix>`` = the most negative one. A mean cosine can be positive while a fifth of
    the steps conflict; these figures show it."""
    suffix = name[len("grad_cos") :]
    defined = cosines[~torch.isnan(cosines)]
    if defined.numel() == 0:
        return {f"grad_conflict_rate{suffix}": float("nan"), f"grad_cos_min{suffix}": float("nan")}
    return {
        f"grad_conflict_rate{suffix}": (defined < 0).double().mean().item(),
        f"grad_cos_min{suffix}": defined.min().item(),
    }
