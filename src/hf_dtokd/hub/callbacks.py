"""Callbacks the trainer adds for the user: the trade-off plot, refreshed at each save and at the end."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hf_dtokd.hub.plotting import plot_tradeoff, tradeoff_keys

logger = logging.getLogger(__name__)

PLOT_NAME = "tradeoff.png"


class TradeoffPlotCallback(TrainerCallback):
    """Writes ``<output_dir>/tradeoff.png`` (pi per objective, grad_cos, grad_norm_ratio, losses).

    Runs on the main process only, at every checkpoint save and at the end of training, from the
    Trainer's ``log_history``; nothing is written before the first trade-off scalar is logged.
    """

    def __init__(self, run_name: str = "student") -> None:
        self.run_name = run_name
        self.last_path: Path | None = None

    def _plot(self, args: TrainingArguments, state: TrainerState) -> None:
        if not state.is_world_process_zero or not tradeoff_keys(state.log_history)["pi"]:
            return
        self.last_path = plot_tradeoff({self.run_name: state.log_history}, Path(args.output_dir) / PLOT_NAME)

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._plot(args, state)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._plot(args, state)
