"""DistillationTrainer: the balancing engine, a transformers.Trainer that balances a task's objectives every step.

The engine knows no task. A task (``trainer/task.py``: classification, detection, segmentation) says how a batch
splits, what the teacher's signal is and what the objectives are; the engine runs the step around it. The maths
lives elsewhere: trade-off methods in ``balancing/``, per-loss gradients in ``gradients/``, the three ways a
micro-batch reaches its backward in ``placement.py``; the teacher in ``teacher.py``, checkpoints in
``resume.py``, logs, card and push in ``publishing.py``.

One optimizer step (an accumulation window of ``n`` micro-batches) runs:

* every micro-batch: the student forward, the frozen teacher forward under ``no_grad``, the task's float32
  objective losses (task last; per-micro-batch means rescaled to exact window means by the task's
  ``example_counts`` (``window_means.py``, counted when the Trainer prefetches the window) and divided by
  ``n``), then the placement's backward:

  - gradient methods (``dto``, the torchjd weightings, DOT): ``autograd.grad`` of every objective
    but the last into its buffer (one batched VJP with ``batched_gradients``), then the single
    ``accelerator.backward(L_task)``;
  - Gram methods with ``gradient_placement="representation"``: the per-loss gradients at a shared
    layer's output (``gradients/representation.py``), this micro-batch's pi from their Gram, then the single
    ``accelerator.backward(w . L)``;
  - weighted-loss methods (``fixed``, ``dto_amortized`` / ``famo``, ``uncertainty``): raw-loss weights
    from the current ``pi`` (and the process-averaged losses), then the single
    ``accelerator.backward(w . L)``;

* on the window's last micro-batch (``accelerator.sync_gradients``): for gradient methods the
  buffers are averaged over processes, the balancer sets its weights from the ``K x K`` Gram of the
  window gradients and writes the update into ``.grad``; the Trainer then clips and steps as usual.
  Every balancer then sees the window's losses (``observe_window``). For ``dto_amortized``, after the
  optimizer step the window is re-forwarded without grad and the trade-off logits take one Adam
  step (see ``balancing/famo.py``); with ``look_ahead="next_batch"`` the next window's losses stand in
  for that forward.

The loss returned to the Trainer (and logged as ``loss``) is the balanced raw-loss objective
``sum_i w_i L_i`` of the step; ``<name>_loss``, ``pi_<name>``, ``weight_<name>`` (the raw-loss weights
applied) and, for gradient methods, ``grad_cos``, ``grad_conflict_rate``, ``grad_cos_min`` and
``grad_norm_ratio`` (each objective against the task) are logged beside it, over the logging interval.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hf_dtokd.balancing import Balancer, build_balancer
from hf_dtokd.gradients.parameters import WindowGradients
from hf_dtokd.hub.callbacks import TradeoffPlotCallback
from hf_dtokd.hub.step_trace import StepTrace
from hf_dtokd.models.classification import check_label_spaces
from hf_dtokd.runtime.backends import allow_fsdp2_sharding
from hf_dtokd.runtime.precision import fp8_recipe
from hf_dtokd.trainer.checkpoints import last_complete_checkpoint
from hf_dtokd.trainer.dtokd_config import DTOKDConfig
from hf_dtokd.trainer.ema import EMACallback, StudentEMA
from hf_dtokd.trainer.look_ahead import LookAheadCallback
from hf_dtokd.trainer.nonfinite import NonFiniteLossError, SkippedSteps, nonfinite_loss_message
from hf_dtokd.trainer.optimizer import BalancerOptimizer
from hf_dtokd.trainer.placement import AccumulationWindow, build_placement, representation_layer
from hf_dtokd.trainer.publishing import Publishing
from hf_dtokd.trainer.resume import TradeoffCheckpoints
from hf_dtokd.trainer.task import TEACHER_PIXELS, DistillationTask, refuse_trainer_hooks
from hf_dtokd.trainer.teacher import DistillationTeacher, load_teacher
from hf_dtokd.trainer.teacher_cache import TEACHER_LOGITS
from hf_dtokd.trainer.tradeoff_log import TradeoffLog
from hf_dtokd.trainer.window_means import count_window, micro_batch_scales

logger = logging.getLogger(__name__)


class DistillationTrainer(TradeoffCheckpoints, Publishing, SkippedSteps, BalancerOptimizer):
    """A Trainer that distils a task's teacher into its student, the objectives balanced every step.

    Args:
        model: the student (the trainable module: a task may wrap it with its projectors).
        args: a [`DTOKDConfig`].
        task: the [`DistillationTask`] (what a batch, the teacher's signal and the objectives are).
        teacher_model: the teacher as a model instance, a Hub id or a local folder; defaults to
            ``args.teacher_model_name_or_path``. It is put in eval mode, frozen and placed by accelerate
            (never wrapped in DDP).
        teacher_loader: how a teacher given by Hub id / folder is loaded (``from_pretrained`` of the task's
            Auto class).
        balancer: a custom trade-off method (a ``Balancer``); defaults to ``args.method``.
        teacher_processing_class: the teacher's image processor; with the student's ``processing_class`` it
            defines how student pixels are converted for the teacher (resize and re-normalise). Loaded from the
            teacher's folder / Hub id when not given. A batch column ``teacher_pixel_values`` overrides it.
        **kwargs: passed to ``transformers.Trainer`` (``compute_metrics`` and ``data_collator`` default to the
            task's).
    """

    # Every loss is a per-micro-batch mean this class rescales and divides by the accumulation steps itself.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: nn.Module | None = None,
        args: DTOKDConfig | None = None,
        task: DistillationTask | None = None,
        teacher_model: nn.Module | str | None = None,
        teacher_loader: Callable[..., nn.Module] | None = None,
        balancer: Balancer | None = None,
        teacher_processing_class: Any | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(args, DTOKDConfig):
            raise TypeError(
                f"args must be a DTOKDConfig (got {type(args).__name__}); build it like TrainingArguments, e.g. "
                "DTOKDConfig(output_dir=..., method='dto')"
            )
        if model is None:
            raise ValueError(f"{type(self).__name__} needs the student model (model=...)")
        if task is None or teacher_loader is None:
            raise ValueError(f"{type(self).__name__} needs a task (task=...) and a teacher loader")
        refuse_trainer_hooks(type(self), DistillationTrainer)
        task.check_objectives()
        self.task = task
        teacher_module, teacher_processing_class = load_teacher(
            teacher_model, args, teacher_processing_class, teacher_loader, student=model
        )
        if kwargs.get("compute_metrics") is None:
            kwargs["compute_metrics"] = task.default_metrics(kwargs.get("processing_class"))
        if kwargs.get("data_collator") is None and task.default_collator() is not None:
            kwargs["data_collator"] = task.default_collator()
        super().__init__(model=model, args=args, **kwargs)
        # the Trainer finds label names in forward()'s signature: none for wrapped or two-head students
        if args.label_names is None:
            self.label_names = ["labels"]
        if getattr(self.accelerator, "is_fsdp2", False):
            allow_fsdp2_sharding(self.model)
        student = self.accelerator.unwrap_model(self.model)
        #: the frozen teacher, its inputs and label mapping (``trainer/teacher.py``)
        self.distillation_teacher = DistillationTeacher(
            teacher_module,
            self.accelerator,
            self.processing_class,
            teacher_processing_class,
            check_label_spaces(student, teacher_module, args.teacher_label_indices),
            task.teacher_forward_kwargs,
            self.compute_loss_context_manager,
        )
        #: the logged trade-off figures and the per-step trace (the plot and tradeoff_steps.json)
        self.tradeoff_log = TradeoffLog(task.objective_names)
        task.attach(student, self.distillation_teacher, self.tradeoff_log)
        self._balancer_from_config = balancer is None
        num_objectives = len(self.objective_names)
        built = balancer if balancer is not None else build_balancer(args, num_objectives)
        self.balancer = built.to(self.args.device)
        if self.balancer.num_objectives != num_objectives:
            raise ValueError(
                f"the balancer weighs {self.balancer.num_objectives} objectives but the trainer has {num_objectives} "
                f"({', '.join(self.objective_names)}); build it with num_objectives={num_objectives}"
            )
        if self.balancer.owns_update and kwargs.get("optimizers", (None, None))[0] is not None:
            raise ValueError(
                f"method={args.method!r} computes the whole update itself and steps with momentum-free SGD; do not "
                "pass an optimizer (optimizers=...), or choose another method"
            )
        layer = representation_layer(self, student) if self.balancer.needs_gradients else None
        self.placement = build_placement(self, student, layer)
        if self.balancer.needs_look_ahead and args.look_ahead == "same_batch":
            self.add_callback(LookAheadCallback(self))
        if args.plot_tradeoff:
            self.add_callback(TradeoffPlotCallback(trace=self.step_trace))
        if self.train_dataset is not None:
            task.check_dataset(self.train_dataset, "train_dataset")
        if args.teacher_cache:
            self.train_dataset = self._cache_teacher_signal(self.train_dataset)
        self._nonfinite_losses = torch.zeros((), dtype=torch.long, device=self.args.device)
        #: the student's non-finite tensors found by the last check over every rank (end of training, a push)
        self._nonfinite_weight_names: list[str] = []
        #: windows without a labelled example, trained on the distillation objectives alone
        self._distillation_only_windows = 0
        #: restores of the optimizer / scheduler ``step`` a skipped window disarmed (``on_nonfinite_loss``)
        self._skipped_step_restores: list[Callable[[], None]] = []
        if args.ema_decay > 0 and (self.is_fsdp_enabled or self.is_deepspeed_enabled):
            raise ValueError(
                f"ema_decay={args.ema_decay} keeps a full copy of the student's weights beside the model, which is "
                "not supported when FSDP or DeepSpeed shard them (the average would mix sharded and whole tensors); "
                "set ema_decay=0 with sharding, or train with DDP"
            )
        #: the moving average of the student's weights (``ema_decay > 0``)
        self.ema = StudentEMA(student, args.ema_decay, args.ema_warmup) if args.ema_decay > 0 else None
        if self.ema is not None:
            self.add_callback(EMACallback(self))
        self.window = AccumulationWindow()

    # ------------------------------------------------------------------ what the run is
    @property
    def objective_names(self) -> tuple[str, ...]:
        """The task's objectives, the task loss last."""
        return self.task.objective_names

    @property
    def teacher(self) -> nn.Module:
        """The frozen, placed teacher model."""
        return self.distillation_teacher.model

    @property
    def teacher_label_index(self) -> torch.Tensor | None:
        """Which teacher output is each student class (None when the label spaces agree)."""
        return self.distillation_teacher.label_index

    @property
    def method_name(self) -> str:
        """The name checkpoints record: the config's method, or the class of a custom balancer."""
        return self.args.method if self._balancer_from_config else f"custom:{type(self.balancer).__name__}"

    @property
    def step_trace(self) -> StepTrace:
        """The per-step cosines and applied weights so far (``tradeoff_log.trace``)."""
        return self.tradeoff_log.trace

    def training_only_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters that are not the student's (projectors); left out of the Gram when
        ``gram_parameters='student'``. None here: the trainable model is the student."""
        return []

    def weight_decays(self, gradients: WindowGradients) -> list[float]:
        """Per-parameter weight decay under the Trainer's rule (no decay on biases and norm layers)."""
        model = self.accelerator.unwrap_model(self.model)
        decay = set(self.get_decay_parameter_names(model))
        names = {id(p): n for n, p in model.named_parameters()}
        return [self.args.weight_decay if names.get(id(p)) in decay else 0.0 for p in gradients.parameters]

    def reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` averaged over processes (as it is on one process)."""
        if self.accelerator.num_processes == 1:
            return tensor
        return self.accelerator.reduce(tensor.clone(), reduction="mean")

    # ------------------------------------------------------------------ set-up
    def _build_accelerator_args(self, **kwargs: Any) -> dict[str, Any]:
        """The Trainer's Accelerator arguments, plus fp8 (``mixed_precision="fp8"`` and the recipe) when asked."""
        args = super()._build_accelerator_args(**kwargs)
        if self.args.fp8_backend is not None:
            args["mixed_precision"] = "fp8"
            args["kwargs_handlers"] = [
                *args.get("kwargs_handlers", []),
                fp8_recipe(self.args.fp8_backend, self.args.fp8_emulate),
            ]
        return args

    def _cache_teacher_signal(self, dataset: Any) -> Any:
        """``teacher_cache=True``: ``dataset`` with the teacher's logits (as a live step computes them) as a column."""
        self.task.check_teacher_cache(self.data_collator)

        def signal(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.teacher_signal_of({"pixel_values": batch["pixel_values"]}, batch.get(TEACHER_PIXELS))

        return self.distillation_teacher.cache(
            dataset, signal, self.data_collator, self.args.per_device_eval_batch_size
        )

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        # the columns the task reads are kept even when the student's forward takes none of them
        for column in (TEACHER_PIXELS, *self.task.batch_columns):
            if column not in self._signature_columns:
                self._signature_columns.append(column)

    # ------------------------------------------------------------------ the step
    def get_batch_samples(
        self, epoch_iterator: Any, num_batches: int, device: torch.device
    ) -> tuple[list, torch.Tensor | int | None]:
        """The Trainer's prefetch of one accumulation window; also counts its examples and labelled units (the
        task's ``example_counts``) for exact window means (``window_means.py``)."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        self.window.counts = count_window(
            batch_samples, self.task.example_counts, self.accelerator, self.args.average_tokens_across_devices
        )
        return batch_samples, num_items_in_batch

    def split_batch(self, inputs: dict[str, Any]) -> tuple[dict[str, Any], Any, torch.Tensor | None]:
        """``(student inputs, labels, teacher pixels)``: the labels checked by the task before the batch moves
        to the device, then the task's split of the prepared batch."""
        self.task.check_batch_labels(inputs.get("labels"))
        inputs = dict(self._prepare_inputs(inputs))
        teacher_pixels = inputs.pop(TEACHER_PIXELS, None)
        student_inputs, labels = self.task.split_batch(inputs)
        return student_inputs, labels, teacher_pixels

    def teacher_signal_of(self, student_inputs: dict[str, Any], teacher_pixels: torch.Tensor | None) -> Any:
        """The teacher's signal for a micro-batch: the cached logits column, or a live teacher forward."""
        cached = student_inputs.pop(TEACHER_LOGITS, None)
        if cached is not None and self.args.teacher_cache:
            return cached
        inputs = self.task.teacher_model_inputs(student_inputs, teacher_pixels)
        return self.task.teacher_signal(self.distillation_teacher.forward(inputs))

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """One micro-batch: split the batch, student, teacher, losses, the placement's backward, and on the
        window's last micro-batch the balancer's update."""
        model.train()
        if callable(getattr(self.optimizer, "train", None)):  # schedule-free optimizers
            self.optimizer.train()
        student_inputs, labels, teacher_pixels = self.split_batch(inputs)
        steps = self.current_gradient_accumulation_steps
        window = self.window
        if not window.is_open:
            self._restore_skipped_step()
            self.tradeoff_log.start(self.state.global_step)
            window.open(model, len(self.objective_names), self.args.device)
            window.distillation_only = self._window_has_no_labels()
            self.placement.open_window(model)

        capture = self.placement.capture()
        capture(True)
        with self.compute_loss_context_manager():
            outputs = self.task.student_forward(model, student_inputs)
        capture(False)
        teacher_signal = self.teacher_signal_of(student_inputs, teacher_pixels)
        losses = self.task.objective_losses(outputs, teacher_signal, labels)
        if self.placement.needs_reach:
            self.placement.mark_reached(losses)
        scales = None
        if window.counts is not None:  # exact window means whatever the micro-batch counts
            scales = micro_batch_scales(self.task.example_counts(labels), window.counts, len(losses))
            losses = losses * scales
        window.losses += losses.detach() / steps

        logged = self.placement.backward(losses, outputs, steps)
        if (
            self.balancer.needs_look_ahead
            and self.args.look_ahead == "same_batch"
            and not window.distillation_only
        ):
            window.batches.append((student_inputs, teacher_signal, labels, scales))
        if self.accelerator.sync_gradients:
            logged = self._close_window(logged)
        return logged

    def _close_window(self, logged: torch.Tensor) -> torch.Tensor:
        """Once per optimizer step: reduce the window's losses, the placement's update, metrics."""
        window = self.window
        window.close()
        window_losses = window.losses = self.reduce_mean(window.losses)
        nonfinite = ~torch.isfinite(window_losses).all()
        self._nonfinite_losses += nonfinite.long()
        # a host sync only when a policy other than the Trainer's default was asked for
        skip = self.args.on_nonfinite_loss != "continue" and bool(nonfinite)
        if (
            skip and self.args.on_nonfinite_loss == "stop"
        ):  # before the step: the weights are the last finite ones
            checkpoint, _ = last_complete_checkpoint(self.args.output_dir)
            raise NonFiniteLossError(
                nonfinite_loss_message(
                    self.state.global_step + 1, self.objective_names, window_losses, checkpoint
                )
            )
        logged = self.placement.close_window(window_losses, logged, skip)
        if not window.distillation_only:
            self.balancer.observe_window(window_losses)
        if not self.placement.pi_per_micro_batch:
            self.tradeoff_log.record_pi(self.balancer.pi)
        if window.distillation_only:  # no trade-off measured: the next_batch pair is broken
            window.previous_losses = None
        elif self.balancer.needs_look_ahead and self.args.look_ahead == "next_batch":
            # the previous window's losses before its step and this window's after it (another batch)
            if window.previous_losses is not None:
                self.balancer.update(window.previous_losses, window_losses)
            window.previous_losses = window_losses
        if skip:
            self._drop_window_gradient()
        self.tradeoff_log.record_losses(window_losses)
        return logged

    def _window_has_no_labels(self) -> bool:
        """Whether the window about to run has no labelled example on any process (one host sync per window,
        for methods that balance each window). Its task loss is 0 by construction: exact DTO-KD would put its
        weight on that zero gradient (the shorter one) and never optimise the distillation loss, FAMO would
        learn from a zero drop; the window is trained on the distillation objectives alone instead, as fixed
        alpha does in effect, and the balancer's state is left as it was (``distillation_only_windows``)."""
        counts = self.window.counts
        if counts is None or not self.balancer.balances_each_window:
            return False
        labelled = counts.labelled.to(self.args.device)
        if (
            self.accelerator.num_processes > 1 and counts.processes == 1
        ):  # counted per process: the global total
            labelled = self.accelerator.reduce(labelled.clone(), reduction="sum")
        if bool(labelled > 0):
            return False
        self._distillation_only_windows += 1
        if self._distillation_only_windows == 1:
            logger.warning(
                "step %d: no labelled example in this accumulation window; method %r trains it on the "
                "distillation loss alone and keeps its trade-off state (counted in distillation_only_windows)",
                self.state.global_step + 1,
                self.args.method,
            )
        return True

    # ------------------------------------------------------------------ evaluation
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The student's task loss (``evaluate`` / ``predict``), as the task defines it."""
        loss, outputs = self.task.evaluation_loss(model, inputs)
        return (loss, outputs) if return_outputs else loss

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """``Trainer.evaluate``; with ``ema_decay`` the moving average is what is scored."""
        if self.ema is None:
            return super().evaluate(*args, **kwargs)
        with self.ema.swapped_in(self.accelerator.unwrap_model(self.model)):
            return super().evaluate(*args, **kwargs)
