"""Checkpoints of the balancing engine: the trade-off state saved beside the Trainer's, and resumed exactly.

``TradeoffCheckpoints`` is a mixin of ``DistillationTrainer``: next to the Trainer's optimizer and scheduler it
writes ``dtokd_state.pt`` (``checkpoints.py``: the balancer's state, the non-finite counters, the trade-off
log's trace and pending values, the moving average of the student, the previous window's losses), refuses a
checkpoint of another method or other objectives, restores the student through ``from_pretrained`` (strictly),
and makes ``resume_from_checkpoint=True`` take the newest *complete* checkpoint.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from torch import nn
from transformers import Trainer

from hf_dtokd.trainer.checkpoints import (
    TRAINER_STATE_NAME,
    check_readable,
    is_complete,
    last_complete_checkpoint,
    load_tradeoff_state,
    restore_student,
    save_tradeoff_state,
)

logger = logging.getLogger(__name__)


class TradeoffCheckpoints(Trainer):
    """Saving, resuming and best-model loading of the engine's trade-off state (see the module docstring)."""

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:
            state = {
                "balancer": self.balancer.state_dict(),
                "nonfinite_losses": self._nonfinite_losses.cpu(),
                "distillation_only_windows": self._distillation_only_windows,
                # the per-step trace so far, and the values recorded since the last log (logged at the next
                # one): a resumed run logs and plots what the uninterrupted run does
                **self.tradeoff_log.state_dict(),
                **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
            }
            if self.window.previous_losses is not None:
                state["previous_window_losses"] = self.window.previous_losses.cpu()
            save_tradeoff_state(output_dir, self.method_name, self.objective_names, state)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint:
            state = load_tradeoff_state(checkpoint, self.method_name, self.objective_names)
            self.balancer.load_state_dict(state["balancer"])
            self._nonfinite_losses = state["nonfinite_losses"].to(self.args.device)
            self._distillation_only_windows = state.get("distillation_only_windows", 0)
            self._load_ema(checkpoint, state)
            self.tradeoff_log.load_state_dict(state, self.args.device)
            previous = state.get("previous_window_losses")
            self.window.previous_losses = None if previous is None else previous.to(self.args.device)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Restore the student through ``from_pretrained`` (see ``checkpoints.restore_student``)."""
        target = model if model is not None else self.model
        if (
            self.is_fsdp_enabled
            or self.is_deepspeed_enabled
            or not restore_student(target, resume_from_checkpoint)
        ):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        """``load_best_model_at_end``: the best checkpoint restored as a resume restores it (through
        ``from_pretrained``, strictly; projectors included), not with the Trainer's non-strict
        ``load_state_dict``, which leaves the tensors saved in another key layout (ViT, DeiT) or under the
        student's own names (a student with projectors) at their last-step values with only a warning."""
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            super()._load_best_model()
            return
        logger.info(
            "loading the best model from %s (score: %s)",
            self.state.best_model_checkpoint,
            self.state.best_metric,
        )
        self._load_from_checkpoint(self.state.best_model_checkpoint)
        if self.ema is not None:  # the best checkpoint's average, put in the student at the end of training
            checkpoint = self.state.best_model_checkpoint
            self._load_ema(
                checkpoint, load_tradeoff_state(checkpoint, self.method_name, self.objective_names)
            )

    def _load_ema(self, checkpoint: str, state: dict[str, Any]) -> None:
        if self.ema is None:
            if "ema" in state:
                logger.warning(
                    "checkpoint %s holds a moving average but ema_decay=0: it is not used", checkpoint
                )
            return
        if "ema" not in state:
            raise ValueError(
                f"checkpoint {checkpoint} holds no moving average of the student (written with ema_decay=0); "
                "resume with ema_decay=0, or start afresh"
            )
        self.ema.load_state_dict(state["ema"])

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``; ``resume_from_checkpoint=True`` takes the newest *complete* checkpoint.

        A checkpoint whose save was interrupted (no ``trainer_state.json`` or trade-off state) is skipped
        with a warning; an explicit path to one is an error. A file of the chosen checkpoint that cannot be
        read (truncated, damaged) is an error naming it and the earlier checkpoint to resume from. The method,
        objectives and layout of the checkpoint's trade-off state must match this run.
        """
        if resume_from_checkpoint is True:
            found, skipped = last_complete_checkpoint(self.args.output_dir)
            for folder in skipped:
                logger.warning("skipping incomplete checkpoint %s (its save did not finish)", folder)
            if found is None:
                raise ValueError(
                    f"resume_from_checkpoint=True but {self.args.output_dir} holds no complete checkpoint; start "
                    "without resume_from_checkpoint"
                )
            resume_from_checkpoint = found
        elif isinstance(resume_from_checkpoint, str) and not is_complete(resume_from_checkpoint):
            if not os.path.isdir(resume_from_checkpoint):
                raise ValueError(f"resume_from_checkpoint={resume_from_checkpoint!r} is not a folder")
            load_tradeoff_state(
                resume_from_checkpoint, self.method_name, self.objective_names
            )  # names what lacks
            raise ValueError(
                f"checkpoint {resume_from_checkpoint} is incomplete (no {TRAINER_STATE_NAME}): its save did not "
                "finish. Resume from an earlier checkpoint, or pass resume_from_checkpoint=True to take the newest "
                "complete one"
            )
        if isinstance(resume_from_checkpoint, str):
            check_readable(resume_from_checkpoint)  # a damaged file is named before anything is loaded
        return super().train(resume_from_checkpoint, *args, **kwargs)
