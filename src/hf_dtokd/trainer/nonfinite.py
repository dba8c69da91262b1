"""What a run does with non-finite losses (``on_nonfinite_loss``), and how a broken student is kept from
looking finished.

* ``continue`` (default, the Trainer's behaviour): the step is applied. The run is then marked: the final
  log and ``train()``'s metrics carry ``nonfinite_losses``, the model card opens with a warning, and
  ``push_to_hub`` refuses a student whose weights are not finite.
* ``skip_step``: the optimizer step of that window is not taken at all, as a step that fp16's loss scaler
  skips: no parameter update, no momentum or second-moment update, no weight decay, no optimizer step
  count, no scheduler step (the learning-rate schedule then runs one step behind ``global_step``, as it
  does after a skipped fp16 step). Zeroing the gradient is not enough: AdamW still moves the weights
  through its momentum and its decoupled weight decay.
* ``stop``: ``NonFiniteLossError`` is raised before the optimizer step, so ``train()`` raises, nothing is
  saved, evaluated or published as a finished model, and the command line exits non-zero. Checkpoints
  saved before the event are intact.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn
from transformers import Trainer

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised with ``on_nonfinite_loss="stop"`` when a window's losses are NaN or infinite."""


def skip_next_call(target: Any, method: str = "step") -> Callable[[], None]:
    """Make the next ``target.<method>()`` a no-op, then restore the method; returns the restore (idempotent),
    for a call that never came.

    Used on the Trainer's optimizer and scheduler for a skipped step: the Trainer calls
    ``optimizer.step()`` and ``lr_scheduler.step()`` itself, and neither offers a skip flag of its own
    (accelerate's ``step_was_skipped`` is set only by its fp16 gradient scaler). An instance attribute
    shadows the method for one call; an instance attribute that was already there is put back.
    """
    had_own = method in vars(target)
    own = vars(target).get(method)

    def skipped(*args: Any, **kwargs: Any) -> None:
        restore()

    def restore() -> None:
        if vars(target).get(method) is not skipped:
            return
        if had_own:
            setattr(target, method, own)
        else:
            delattr(target, method)

    setattr(target, method, skipped)
    return restore


def nonfinite_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters and buffers holding a NaN or an infinity, in this process's data.

    No collective: a sharded tensor (FSDP2's DTensor, a ZeRO-3 partition) is checked on its local shard, so the
    call is safe on one rank alone; ``nonfinite_parameters_everywhere`` combines every rank's answer.
    """
    named = list(model.named_parameters()) + list(model.named_buffers())
    return [name for name, tensor in named if _has_nonfinite(_local_data(tensor))]


def nonfinite_parameters_everywhere(model: nn.Module, accelerator: Accelerator) -> list[str]:
    """``nonfinite_parameters`` over every process's shards (a collective when there are several: every rank
    must call it)."""
    local = nonfinite_parameters(model)
    if accelerator.num_processes == 1:
        return local
    return sorted({name for names in gather_object([local]) for name in names})


def _local_data(tensor: torch.Tensor) -> torch.Tensor:
    if hasattr(tensor, "to_local"):  # FSDP2: a DTensor
        return tensor.to_local()
    partition = getattr(tensor, "ds_tensor", None)  # ZeRO-3: the parameter's data is this rank's partition
    return tensor if partition is None else partition


def _has_nonfinite(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() and bool(tensor.numel()) and not bool(torch.isfinite(tensor).all())


def nonfinite_loss_message(
    step: int, names: Sequence[str], losses: torch.Tensor, checkpoint: str | None
) -> str:
    values = ", ".join(
        f"{name}={value:.4g}" for name, value in zip(names, losses.detach().float().cpu().tolist())
    )
    resume = (
        f" The last checkpoint, {checkpoint}, was saved before it."
        if checkpoint
        else " No checkpoint was saved before it."
    )
    return (
        f"non-finite losses at optimizer step {step} ({values}); on_nonfinite_loss='stop' ends the run before "
        "this step, and nothing is saved as a finished model. Common causes: NaN or infinite pixels (an image "
        "processor with image_std 0), a learning rate too high, fp16 overflow (use bf16). Fix the cause and "
        "start again, or set on_nonfinite_loss='skip_step' to skip such steps." + resume
    )


def run_health_warnings(nonfinite_losses: int, nonfinite_weights: Sequence[str]) -> list[str]:
    """The model card's warnings for a run that had non-finite losses or ends with non-finite weights."""
    warnings = []
    if nonfinite_losses:
        warnings.append(
            f"{nonfinite_losses} optimizer step(s) of this run had non-finite (NaN/inf) losses "
            "(`nonfinite_losses` in the training log)."
        )
    if nonfinite_weights:
        shown = ", ".join(f"`{name}`" for name in nonfinite_weights[:5])
        more = f" and {len(nonfinite_weights) - 5} more" if len(nonfinite_weights) > 5 else ""
        warnings.append(
            f"{len(nonfinite_weights)} tensor(s) of this model are not finite ({shown}{more}): its outputs are "
            "NaN and its evaluation is meaningless."
        )
    return warnings


def refuse_nonfinite_publish(bad: Sequence[str]) -> None:
    """Raise before a student whose weights are not finite (``bad``: the names of those tensors) is pushed."""
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(
            f"refusing to push the student to the Hub: {len(bad)} of its tensors hold NaN or inf values ({shown}). "
            "The run had non-finite losses (see nonfinite_losses in the training log). Fix the cause (NaN "
            "pixels, a learning rate too high, fp16 overflow) and train again, or set "
            "on_nonfinite_loss='skip_step' / 'stop'"
        )


class SkippedSteps(Trainer):
    """``on_nonfinite_loss="skip_step"``, a mixin of ``DistillationTrainer``: a window with non-finite losses takes
    no optimizer or scheduler step (their next ``step`` call is disarmed, ``skip_next_call``) and its gradient is
    zeroed, so the logged gradient norm is 0, not NaN."""

    @property
    def step_skipped(self) -> bool:
        """Whether this window's optimizer step is (or was) skipped: its one-shot skips are still recorded."""
        return bool(self._skipped_step_restores)

    def _drop_window_gradient(self) -> None:
        for param in self.window.model.parameters():
            if param.grad is not None:
                param.grad.zero_()
        if self.balancer.handles_clipping:
            self.balancer.last_grad_norm = torch.zeros((), device=self.args.device)
        self._skipped_step_restores = [skip_next_call(self.optimizer)]
        if self.lr_scheduler is not None:
            self._skipped_step_restores.append(skip_next_call(self.lr_scheduler))
        logger.warning(
            "non-finite losses at step %d: its optimizer and scheduler steps are skipped (on_nonfinite_loss="
            "'skip_step')",
            self.state.global_step + 1,
        )

    def _restore_skipped_step(self) -> None:
        """Put back a ``step`` left disarmed (a scheduler the Trainer did not call, e.g. ReduceLROnPlateau)."""
        for restore in self._skipped_step_restores:
            restore()
        self._skipped_step_restores = []
