"""What the example scripts share: parsing, then train, save, evaluate, and push or write the model card."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from transformers import HfArgumentParser, Trainer, TrainingArguments

from hf_dtokd.trainer.nonfinite import NonFiniteLossError


def parse_script_args(parser: HfArgumentParser, argv: list[str] | None) -> tuple[Any, ...]:
    """Flags, or one JSON file with the same keys as the only argument; sets the log level from the config."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        parsed = parser.parse_json_file(os.path.abspath(argv[0]))
    else:
        parsed = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO if parsed[-1].should_log else logging.WARNING)
    return tuple(parsed)


def train_evaluate_publish(
    trainer: Trainer, config: TrainingArguments, card: dict[str, Any]
) -> dict[str, Any]:
    """``run_*.py``'s ending: train (resuming if asked) and save, evaluate, push to the Hub or write the card.

    A run stopped for non-finite losses exits non-zero here, before anything is saved; a student whose weights
    are not finite is refused by ``push_to_hub``."""
    metrics: dict[str, Any] = {}
    if config.do_train:
        try:
            result = trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
        except NonFiniteLossError as error:  # on_nonfinite_loss="stop": no save, no evaluation, no card
            raise SystemExit(f"training stopped: {error}") from error
        trainer.save_model()
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
        metrics.update(result.metrics)
    if config.do_eval:
        evaluation = trainer.evaluate()
        trainer.log_metrics("eval", evaluation)
        trainer.save_metrics("eval", evaluation)
        metrics.update(evaluation)
    if config.push_to_hub:
        trainer.push_to_hub(**card)
    else:
        trainer.create_model_card(**card)
    return metrics
