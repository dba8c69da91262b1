"""Callbacks the trainer adds for the user: the trade-off plot, refreshed at each save and at the end."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hf_dtokd.hub.plotting import plot_tradeoff, tradeoff_keys
from hf_dtokd.hub.step_trace import StepTrace

logger = logging.getLogger(__name__)

PLOT_NAME = "tradeoff.png"


class TradeoffPlotCallback(TrainerCallback):
    """Writes ``<output_dir>/tradeoff.png`` (pi per objective, applied weights, grad_cos, conflict rate,
    grad_norm_ratio, losses) and, given the trainer's ``StepTrace``, ``tradeoff_steps.json``.

    Runs on the main process only, at every checkpoint save and at the end of training, from the
    Trainer's ``log_history`` (interval means) and the trace (per-step cosines and applied weights);
    nothing is written before the first trade-off scalar is logged.
    """

    def __init__(self, run_name: str = "student", trace: StepTrace | None = None) -> None:
        self.run_name = run_name
        self.trace = trace
        self.last_path: Path | None = None

    def _plot(self, args: TrainingArguments, state: TrainerState) -> None:
        if not state.is_world_process_zero or not tradeoff_keys(state.log_history)["pi"]:
            return
        traces = None
        if self.trace is not None:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            self.trace.save(args.output_dir)
            traces = {self.run_name: self.trace.to_dict()}
        self.last_path = plot_tradeoff(
            {self.run_name: state.log_history}, Path(args.output_dir) / PLOT_NAME, traces=traces
        )

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._plot(args, state)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._plot(args, state)
