"""The task contract: what a distillation task tells the balancing engine, and nothing else.

The engine (``engine.py``: the step, the accumulation window, the placements, the balancer, checkpoints)
knows no task. A task (image classification, object detection, semantic segmentation, or one of yours) is a
``DistillationTask`` subclass that answers, for one micro-batch:

* ``split_batch``: which of the batch's entries are the student's forward inputs and which are the labels
  (``check_batch_labels`` refuses bad labels on the way);
* ``student_forward``: the student's forward on those inputs (one call of the model unless the task needs more,
  e.g. detection's extra forward on unlabelled images);
* ``teacher_model_inputs``: what the teacher's forward gets (the converted pixels, plus e.g. a pixel mask);
* ``teacher_signal``: what the objectives need of the teacher's outputs (its logits mapped to the student's
  classes, its features, its boxes);
* ``objective_losses``: one float32 loss per entry of ``objective_names`` (the task loss last: its gradient
  goes through the Trainer's single backward), with ``objective_descriptions`` for the model card;
* ``example_counts``: what each loss is a mean over in this micro-batch (examples for the distillation
  losses, labelled units for the task loss: labelled images, or labelled pixels), so that the engine can
  make the window's means exact and recognise a window without labels;
* ``evaluation_loss``, ``default_metrics`` and ``default_collator``: evaluation and data;
* ``check_dataset``: a dataset's labels before training starts.

The engine attaches the student, the teacher (``teacher.py``) and the trade-off log to the task
(``attach``) once the models are placed; a task never reads the trainer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hf_dtokd.trainer.teacher import TEACHER_PIXELS, DistillationTeacher
from hf_dtokd.trainer.tradeoff_log import TradeoffLog

__all__ = ["TEACHER_PIXELS", "DistillationTask", "refuse_trainer_hooks"]


class DistillationTask:
    """Base class of a distillation task (see the module docstring); subclasses override what differs."""

    #: The objectives, the task loss last. Two by default: ``(distill, task)``, the paper's form.
    objective_names: tuple[str, ...] = ("distill", "task")
    #: True when every objective is computed from the logits: ``representation_layer="auto"`` then takes
    #: the logits; False lets "auto" take ``default_representation_layer`` or the family's last shared layer.
    losses_from_logits: bool = False
    #: Whether ``teacher_cache=True`` applies (the objectives need only the teacher's logits).
    supports_teacher_cache: bool = False
    #: The config fields of this task's signal, reported in the model card.
    signal_fields: tuple[str, ...] = ()
    #: Extra keyword arguments of the teacher's forward (feature distillation asks for hidden states).
    teacher_forward_kwargs: dict[str, Any] = {}
    #: Batch columns the task reads although the student's forward does not take them.
    batch_columns: tuple[str, ...] = ("labels",)

    def __init__(self, args: Any) -> None:
        self.args = args
        self.student: nn.Module | None = None
        self.teacher: DistillationTeacher | None = None
        self.log: TradeoffLog | None = None

    def attach(self, student: nn.Module, teacher: DistillationTeacher, log: TradeoffLog) -> None:
        """Called by the engine once the models are placed: the (unwrapped) trainable model, the teacher and
        the log where a task may record the parts of its objectives (``record_part``)."""
        self.student, self.teacher, self.log = student, teacher, log

    def check_objectives(self) -> None:
        names = self.objective_names
        if len(names) < 2 or len(set(names)) != len(names) or names[-1] != "task":
            raise ValueError(
                f"objective_names must be at least two distinct names ending with 'task', got {names}"
            )

    def record_part(self, name: str, value: torch.Tensor) -> None:
        """Log a part of an objective (a grouped objective's terms, the task loss's components) by name, from
        the training forward only (not the amortized methods' re-evaluation, which runs without grad)."""
        if self.log is not None and torch.is_grad_enabled():
            self.log.record(name, value.detach().float())

    # ------------------------------------------------------------------ data
    def check_dataset(self, dataset: Any, name: str) -> None:
        """Refuse a dataset whose labels cannot be this task's (before training). Default: nothing to check."""

    def check_batch_labels(self, labels: Any) -> None:
        """Refuse a batch's labels (called on CPU batches, without a device sync). Default: nothing to check."""

    def split_batch(self, inputs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """``(student forward inputs, labels)`` of a prepared batch (``teacher_pixel_values`` already taken out).
        Default: the labels are popped from the inputs."""
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        if labels is None:
            raise ValueError(f"the batch has no 'labels' (keys: {sorted(inputs)}); {self.labels_help()}")
        return inputs, labels

    def labels_help(self) -> str:
        """How a dataset gives this task its labels (said when they are missing)."""
        return "add a 'labels' column"

    def example_counts(self, labels: Any) -> torch.Tensor | None:
        """``[examples, labelled units]`` of a micro-batch (float32, on the labels' device), the counts its
        distillation and task losses are means over; None when the losses keep their own normalisation (the
        window means are then the micro-batch means' average)."""
        return None

    # ------------------------------------------------------------------ student, teacher and losses
    def student_forward(self, model: nn.Module, student_inputs: dict[str, Any]) -> Any:
        """The student's outputs for a micro-batch (what ``objective_losses`` reads). Default: one forward."""
        return model(**student_inputs)

    def teacher_model_inputs(
        self, student_inputs: dict[str, Any], teacher_pixels: torch.Tensor | None
    ) -> dict[str, Any]:
        """The teacher's forward inputs: the ``teacher_pixel_values`` column, else the student's pixels converted
        by the teacher (its size and normalisation)."""
        assert self.teacher is not None, "attach() first"
        return {"pixel_values": self.teacher.pixels(student_inputs["pixel_values"], teacher_pixels)}

    def teacher_signal(self, outputs: Any) -> Any:
        """What the objectives need of the teacher's outputs (detached)."""
        raise NotImplementedError

    def objective_losses(self, outputs: Any, teacher_signal: Any, labels: Any) -> torch.Tensor:
        """One float32 loss per entry of ``objective_names``, stacked (the task loss last)."""
        raise NotImplementedError

    def objective_descriptions(self) -> dict[str, str]:
        """What each objective is, for the model card."""
        return {name: name for name in self.objective_names}

    def default_representation_layer(self, student: nn.Module) -> str | None:
        """``representation_layer="auto"`` when the losses are not all computed from the logits; None takes the
        family's entry of ``gradients.representation.FAMILY_LAYERS``."""
        return None

    # ------------------------------------------------------------------ evaluation
    def evaluation_loss(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        """``(the student's task loss, the outputs kept for metrics)`` on an evaluation batch."""
        raise NotImplementedError

    def default_metrics(self, processing_class: Any) -> Callable[..., dict[str, float]] | None:
        """The task's ``compute_metrics`` when the user gives none."""
        return None

    def default_collator(self) -> Callable[..., Any] | None:
        """The task's ``data_collator`` when the user gives none (None: the Trainer's default)."""
        return None

    def check_teacher_cache(self, data_collator: Any) -> None:
        """Refuse ``teacher_cache=True`` where the cached signal would not be the live one."""
        if not self.supports_teacher_cache:
            raise ValueError(
                f"teacher_cache=True caches the teacher's logits, but {type(self).__name__} needs more of the "
                "teacher at every step (features / boxes / maps); set teacher_cache=False"
            )


#: the extension hooks that were trainer members before the task contract; a trainer subclass defining one would
#: be silently ignored (or, for ``objective_names``, disagree with the task's losses)
TASK_HOOKS = (
    "objective_names",
    "compute_objective_losses",
    "objective_losses",
    "objective_descriptions",
    "teacher_signal",
    "teacher_model_inputs",
    "teacher_forward_kwargs",
    "losses_from_logits",
    "supports_teacher_cache",
    "signal_fields",
    "default_representation_layer",
)


def refuse_trainer_hooks(trainer_class: type, engine: type) -> None:
    """Refuse a trainer class (below ``engine``) that defines one of ``TASK_HOOKS``."""
    for cls in trainer_class.__mro__:
        if cls is engine:
            return
        defined = [name for name in TASK_HOOKS if name in vars(cls)]
        if defined:
            raise TypeError(
                f"{cls.__name__} defines {', '.join(defined)} on the trainer; these belong to the task now: subclass "
                "the task (e.g. hf_dtokd.ClassificationTask) with them and pass it as task=..."
            )
