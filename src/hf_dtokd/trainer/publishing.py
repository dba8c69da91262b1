"""What leaves the engine: the logs with the trade-off figures and the run's health, the model card, the Hub push.

``Publishing`` is a mixin of ``DistillationTrainer``. Each log gets the trade-off log's figures (losses, pi,
applied weights, cosines, conflict rate) and the non-finite counters; the final summary gets the number of
non-finite tensors of the student. The model card is the Trainer's plus a distillation section (the teacher,
the method and its hyper-parameters, pi and conflict over training, the trade-off plot, warnings when the run
had non-finite losses or weights). A student whose weights are not finite is never pushed: ``push_to_hub``
refuses it and a push at a save is skipped with a warning.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from transformers import Trainer

from hf_dtokd.hub.callbacks import PLOT_NAME
from hf_dtokd.hub.model_card import CARD_TAGS, add_eval_results, distillation_section
from hf_dtokd.trainer.nonfinite import (
    nonfinite_parameters,
    nonfinite_parameters_everywhere,
    refuse_nonfinite_publish,
    run_health_warnings,
)

logger = logging.getLogger(__name__)


class Publishing(Trainer):
    """Logs, model card and Hub push of a distillation run (see the module docstring)."""

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.tradeoff_log.flush_into(logs, self.state.global_step):
            logs["nonfinite_losses"] = int(self._nonfinite_losses.item())
            logs["distillation_only_windows"] = self._distillation_only_windows
            logs["tradeoff_skipped"] = int(self.balancer.nonfinite_events.item())
        if "train_runtime" in logs:  # the Trainer's final summary (also train()'s metrics): the run's health
            self._add_run_health(logs)
        super().log(logs, start_time)

    def _add_run_health(self, logs: dict[str, float]) -> None:
        count = int(self._nonfinite_losses.item())
        logs["nonfinite_losses"] = count
        bad = self._nonfinite_weights()
        logs["nonfinite_weights"] = len(bad)
        if bad:
            logger.warning(
                "the student ends with %d non-finite tensor(s) after %d optimizer step(s) with non-finite losses "
                "(on_nonfinite_loss=%r): its outputs are NaN; do not use or publish it before finding the cause",
                len(bad),
                count,
                self.args.on_nonfinite_loss,
            )
        elif count:
            logger.warning(
                "%d optimizer step(s) had non-finite losses (%s)",
                count,
                "skipped" if self.args.on_nonfinite_loss == "skip_step" else "applied",
            )

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
    ) -> None:
        """The Trainer's card (``finetuned_from`` stays the student's base) plus the distillation section.

        Tags ``knowledge-distillation`` and ``dto-kd`` are added; the section names the teacher, the method and
        its hyper-parameters, summarises pi / gradient conflict over training and shows ``tradeoff.png``.
        """
        if not self.is_world_process_zero():
            return
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        tags += [tag for tag in CARD_TAGS if tag not in tags]
        super().create_model_card(
            language=language,
            license=license,
            tags=tags,
            model_name=model_name,
            finetuned_from=finetuned_from,
            tasks=tasks,
            dataset_tags=dataset_tags,
            dataset=dataset,
            dataset_args=dataset_args,
        )
        plot = os.path.join(self.args.output_dir, PLOT_NAME)
        bad = {
            *nonfinite_parameters(self.accelerator.unwrap_model(self.model)),
            *self._nonfinite_weight_names,
        }
        # a method measured unsound (the balancer's ``experiment``) says so on the card, as at config time
        experiment = getattr(self.balancer, "experiment", "")
        section = distillation_section(
            self.args,
            self.method_name,
            self.distillation_teacher.name,
            self.objective_names,
            self.state.log_history,
            PLOT_NAME if os.path.isfile(plot) else None,
            fields=self.balancer.config_fields if self._balancer_from_config else ("temperature",),
            trainer=type(self).__name__,
            objectives=self.task.objective_descriptions(),
            signal_fields=self.task.signal_fields,
            warnings=[
                *run_health_warnings(int(self._nonfinite_losses.item()), sorted(bad)),
                *([experiment] if experiment else []),
            ],
        )
        card = os.path.join(self.args.output_dir, "README.md")
        with open(card, encoding="utf-8") as handle:
            text = handle.read()
        with open(card, "w", encoding="utf-8") as handle:
            handle.write(text.rstrip() + "\n\n" + section)
        task = tasks[0] if isinstance(tasks, list) and tasks else tasks
        named = dataset[0] if isinstance(dataset, list) and dataset else dataset
        add_eval_results(card, self.state.log_history, task, named)

    def push_to_hub(self, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.push_to_hub``, refused (``ValueError``) when the student's weights are not finite."""
        refuse_nonfinite_publish(self._nonfinite_weights())
        return super().push_to_hub(*args, **kwargs)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """The Trainer's push at a save (``hub_strategy``), skipped with a warning while the weights are not
        finite."""
        bad = self._nonfinite_weights()  # every rank calls it (the Trainer's save runs on all of them)
        if bad:
            logger.warning(
                "not pushing %s to the Hub: %d tensor(s) of the student are not finite",
                checkpoint_folder,
                len(bad),
            )
            return
        super()._push_from_checkpoint(checkpoint_folder)

    def _nonfinite_weights(self) -> list[str]:
        """The student's tensors holding NaN or inf, over every rank's shards (every rank must call it); kept for
        the model card, which the main process writes alone."""
        self._nonfinite_weight_names = nonfinite_parameters_everywhere(
            self.accelerator.unwrap_model(self.model), self.accelerator
        )
        return self._nonfinite_weight_names
