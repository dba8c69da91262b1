"""The amortized methods' same-batch look-ahead: the window's losses again after the optimizer step.

``dto_amortized`` / ``famo`` learn their trade-off from how each loss moved over a step. With
``look_ahead="same_batch"`` the window's micro-batches are kept and, right after ``optimizer.step()``
(``LookAheadCallback``), re-forwarded without grad; the balancer then takes its update from the losses before
and after (``balancing/famo.py``). The re-forward is a measurement: train mode like the training forward it is
compared with (batch statistics, dropout), but normalisation layers' running statistics are restored afterwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from transformers import TrainerCallback, TrainingArguments

from hf_dtokd.runtime.backends import reshard
from hf_dtokd.trainer.norm_statistics import preserved_running_statistics

if TYPE_CHECKING:
    from hf_dtokd.trainer.engine import DistillationTrainer


def look_ahead_update(trainer: DistillationTrainer) -> None:
    """Losses of the kept window after the optimizer step (averaged over processes), then the pi update."""
    window = trainer.window
    if not window.batches:
        return
    model = window.model
    after = torch.zeros(len(trainer.objective_names), device=trainer.args.device)
    with torch.no_grad(), trainer.compute_loss_context_manager(), preserved_running_statistics(model):
        for student_inputs, teacher_signal, labels, scales in window.batches:
            losses = trainer.task.objective_losses(
                trainer.task.student_forward(model, student_inputs), teacher_signal, labels
            )
            after += losses if scales is None else losses * scales
    if trainer.distillation_teacher.fsdp2:  # before zero_grad, which must see the sharded parameters
        reshard(model)
    after = trainer.reduce_mean(after / len(window.batches))
    trainer.balancer.update(window.losses, after)
    window.batches = []


class LookAheadCallback(TrainerCallback):
    """Runs the same-batch look-ahead right after ``optimizer.step()``."""

    def __init__(self, trainer: DistillationTrainer) -> None:
        self.trainer = trainer

    def on_optimizer_step(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        look_ahead_update(self.trainer)
