"""An exponential moving average of the student's weights (``ema_decay > 0``), as DeiT's and RT-DETR's
recipes train with: timm's ``ModelEmaV3`` keeps it, this module ties it to the Trainer.

After every optimizer step ``e <- d e + (1 - d) p`` (``d = ema_decay``; the first step copies the weights,
and with ``ema_warmup`` the decay ramps up as ``1 - (1 + t)^(-2/3)`` capped at ``d``, timm's warm-up). The
average is what is evaluated during training (its weights are swapped in for ``evaluate`` and swapped back
after), it is saved with each checkpoint (``dtokd_state.pt``) and restored on resume, and at the end of
training it replaces the student's weights, so the saved, evaluated and pushed model is the average (as
timm's and RT-DETR's training scripts keep their EMA model). With ``load_best_model_at_end`` the best
checkpoint's average is the one kept.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainingArguments

if TYPE_CHECKING:
    from hf_dtokd.trainer.engine import DistillationTrainer

logger = logging.getLogger(__name__)


class StudentEMA:
    """The moving average of a model's parameters and buffers (timm's ``ModelEmaV3``)."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False) -> None:
        from timm.utils import ModelEmaV3  # timm is a dependency; imported here to keep the import light

        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1) to keep an average (0 turns it off), got {decay}")
        self.ema = ModelEmaV3(model, decay=decay, use_warmup=warmup)
        self.ema.module.requires_grad_(False)

    def update(self, model: nn.Module, step: int) -> None:
        """After optimizer step ``step`` (1 for the first: the average starts as a copy)."""
        self.ema.update(model, step=step)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach().cpu().clone() for name, tensor in self.ema.module.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.ema.module.load_state_dict(state, strict=True)

    def copy_into(self, model: nn.Module) -> None:
        """Replace ``model``'s weights (parameters and buffers) with the average."""
        with torch.no_grad():
            for target, source in zip(_tensors(model), _tensors(self.ema.module)):
                target.copy_(source)

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        """``model`` holds the average inside the block, its own weights again after it."""
        own = [tensor.detach().clone() for tensor in _tensors(model)]
        self.copy_into(model)
        try:
            yield
        finally:
            with torch.no_grad():
                for target, saved in zip(_tensors(model), own):
                    target.copy_(saved)


def _tensors(model: nn.Module) -> list[Any]:
    """Parameters then buffers, in the order both copies of the model list them."""
    return [*model.parameters(), *model.buffers()]


class EMACallback(TrainerCallback):
    """Updates the student's moving average after every optimizer step it took, and puts the average in the
    student at the end of training (``trainer/ema.py``)."""

    def __init__(self, trainer: DistillationTrainer) -> None:
        self.trainer = trainer

    def on_optimizer_step(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        trainer = self.trainer
        if not trainer.step_skipped:  # a skipped step changes nothing, the average included
            trainer.ema.update(trainer.accelerator.unwrap_model(trainer.model), state.global_step + 1)

    def on_train_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer.ema.copy_into(self.trainer.accelerator.unwrap_model(self.trainer.model))
        logger.info("the student's weights are now their moving average (ema_decay=%s)", args.ema_decay)
