"""What the example scripts share: train, save, evaluate, then push or write the model card."""

from __future__ import annotations

from typing import Any

from transformers import Trainer, TrainingArguments


def train_evaluate_publish(
    trainer: Trainer, config: TrainingArguments, card: dict[str, Any]
) -> dict[str, Any]:
    """``run_*.py``'s ending: train (resuming if asked) and save, evaluate, push to the Hub or write the card."""
    metrics: dict[str, Any] = {}
    if config.do_train:
        result = trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
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
