"""DTOKDTrainer: a transformers.Trainer whose training step balances task and distillation every step.

The trainer orchestrates; the maths lives elsewhere: losses in ``losses/``, trade-off methods in
``balancing/``, per-loss gradients in ``gradients/``, the three ways a micro-batch reaches its backward in
``trainer/placement.py``, the teacher's inputs in ``trainer/teacher_inputs.py``.

One optimizer step (an accumulation window of ``n`` micro-batches) runs:

* every micro-batch: the student forward, the frozen teacher forward under ``no_grad``, the
  float32 objective losses (``objective_names``, task last; by default ``(L_distill, L_task)``;
  per-micro-batch means rescaled to exact window means (``trainer/window_means.py``, from the counts taken when
  the Trainer prefetches the window) and divided by ``n``), then

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

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_dtokd.balancing import OBJECTIVES, Balancer, GramianBalancer, build_balancer
from hf_dtokd.gradients.parameters import WindowGradients
from hf_dtokd.gradients.representation import (
    resolve_representation_layer,
)
from hf_dtokd.hub.callbacks import PLOT_NAME, TradeoffPlotCallback
from hf_dtokd.hub.model_card import CARD_TAGS, add_eval_results, distillation_section
from hf_dtokd.hub.step_trace import StepTrace
from hf_dtokd.losses import IGNORE_INDEX, logit_kd_loss, task_cross_entropy
from hf_dtokd.models.classification import (
    check_label_spaces,
    check_teacher_is_not_the_student,
    classification_logits,
    load_image_classifier,
    load_image_processor,
    num_labels,
)
from hf_dtokd.runtime.backends import allow_fsdp2_sharding, check_backend_support, prepare_teacher, reshard
from hf_dtokd.runtime.precision import fp8_recipe
from hf_dtokd.trainer.checkpoints import (
    TRAINER_STATE_NAME,
    check_readable,
    is_complete,
    last_complete_checkpoint,
    load_tradeoff_state,
    restore_student,
    save_tradeoff_state,
)
from hf_dtokd.trainer.dtokd_config import DTOKDConfig
from hf_dtokd.trainer.ema import EMACallback, StudentEMA
from hf_dtokd.trainer.metrics import classification_metrics
from hf_dtokd.trainer.nonfinite import (
    NonFiniteLossError,
    nonfinite_loss_message,
    nonfinite_parameters,
    nonfinite_parameters_everywhere,
    refuse_nonfinite_publish,
    run_health_warnings,
    skip_next_call,
)
from hf_dtokd.trainer.norm_statistics import preserved_running_statistics
from hf_dtokd.trainer.placement import AccumulationWindow, build_placement
from hf_dtokd.trainer.teacher_cache import TEACHER_LOGITS, add_teacher_logits, check_cacheable
from hf_dtokd.trainer.teacher_inputs import PixelSpace, TeacherInputConverter
from hf_dtokd.trainer.tradeoff_log import TradeoffLog
from hf_dtokd.trainer.window_means import count_window, micro_batch_scales

logger = logging.getLogger(__name__)

TEACHER_PIXELS = "teacher_pixel_values"
LABEL_COLUMNS = ("labels", "label")


class _LookAheadCallback(TrainerCallback):
    """Runs the amortized methods' same-batch look-ahead right after ``optimizer.step()``."""

    def __init__(self, trainer: DTOKDTrainer) -> None:
        self.trainer = trainer

    def on_optimizer_step(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer._look_ahead_update()


class DTOKDTrainer(Trainer):
    """Knowledge distillation for image classifiers, balanced by DTO-KD (or a baseline) every step.

    Args:
        model: the student (any ``AutoModelForImageClassification`` model, timm models included).
        args: a [`DTOKDConfig`].
        teacher_model: the teacher as a model instance, a Hub id or a local folder; defaults to
            ``args.teacher_model_name_or_path``. It is put in eval mode, frozen and placed by
            accelerate (never wrapped in DDP).
        balancer: a custom trade-off method (a ``Balancer``); defaults to ``args.method``.
        teacher_processing_class: the teacher's image processor. With the student's
            ``processing_class`` it defines how student pixels are converted for the teacher
            (resize and re-normalise). Loaded from the teacher's folder / Hub id when not given.
            A batch column ``teacher_pixel_values`` overrides the conversion.
        compute_metrics: defaults to top-1 (and top-5 with more than five classes) accuracy.
        **kwargs: passed to ``transformers.Trainer``.
    """

    # Every loss is a per-micro-batch mean this class rescales and divides by the accumulation steps itself.
    loss_is_scaled_for_ga = False

    #: The objectives, in the order of ``compute_objective_losses``; the task loss is last (its gradient
    #: goes through the Trainer's single backward). Subclasses add signals by extending both.
    objective_names: tuple[str, ...] = OBJECTIVES

    #: True while every objective is computed from the logits (``compute_objective_losses`` sees only
    #: logits): ``representation_layer="auto"`` then takes the logits. Subclasses whose losses read
    #: other activations set it to False, and "auto" takes the family's last shared layer.
    losses_from_logits: bool = True

    #: Whether ``teacher_cache=True`` applies: the objectives need only ``teacher_signal``'s logits.
    supports_teacher_cache: bool = True

    #: The config fields of this trainer's signal, reported in the model card (``signals/signal_config.py``).
    signal_fields: tuple[str, ...] = ()

    #: Extra keyword arguments of the teacher's forward (feature distillation asks for hidden states).
    teacher_forward_kwargs: dict[str, Any] = {}

    def __init__(
        self,
        model: nn.Module | None = None,
        args: DTOKDConfig | None = None,
        teacher_model: nn.Module | str | None = None,
        balancer: Balancer | None = None,
        teacher_processing_class: Any | None = None,
        compute_metrics: Callable[..., dict[str, float]] | None = None,
        **kwargs: Any,
    ) -> None:
        if args is None:
            args = DTOKDConfig(output_dir="trainer_output")
        if not isinstance(args, DTOKDConfig):
            raise TypeError(
                f"args must be a DTOKDConfig (got {type(args).__name__}); build it like TrainingArguments, e.g. "
                "DTOKDConfig(output_dir=..., method='dto')"
            )
        if model is None:
            raise ValueError("DTOKDTrainer needs the student model (model=...)")
        teacher_model, teacher_processing_class = load_teacher(
            teacher_model, args, teacher_processing_class, student=model
        )
        teacher_name = _model_name(teacher_model)

        super().__init__(
            model=model,
            args=args,
            compute_metrics=compute_metrics if compute_metrics is not None else classification_metrics,
            **kwargs,
        )
        # the Trainer finds label names in forward()'s signature: none for wrapped or two-head students
        if args.label_names is None:
            self.label_names = list(LABEL_COLUMNS[:1])
        self._fsdp2 = bool(getattr(self.accelerator, "is_fsdp2", False))
        if self._fsdp2:
            allow_fsdp2_sharding(self.model)
        self.teacher_label_index = check_label_spaces(self.model, teacher_model, args.teacher_label_indices)
        self.teacher = self._prepare_teacher(teacher_model)
        self.teacher_inputs = self._build_teacher_input_converter(teacher_processing_class)
        self.teacher_name = teacher_name
        self._check_objectives()
        num_objectives = len(self.objective_names)
        self._balancer_from_config = balancer is None
        self.balancer = (balancer if balancer is not None else build_balancer(args, num_objectives)).to(
            self.args.device
        )
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
        layer = None
        if self.balancer.needs_gradients:
            self._check_gradient_method_supported()
            layer = self._representation_layer_to_use()
        self.placement = build_placement(self, self.accelerator.unwrap_model(self.model), layer)
        if self.balancer.needs_look_ahead and args.look_ahead == "same_batch":
            self.add_callback(_LookAheadCallback(self))
        #: the logged trade-off figures and the per-step trace (the plot and tradeoff_steps.json)
        self.tradeoff_log = TradeoffLog(self.objective_names)
        if args.plot_tradeoff:
            self.add_callback(TradeoffPlotCallback(trace=self.step_trace))
        if self.train_dataset is not None:
            self._check_dataset_labels(self.train_dataset, "train_dataset")
        if args.teacher_cache:
            from hf_dtokd.data.augmentation import (
                MixupCollator,
            )  # the data package is not the trainer's import

            if isinstance(self.data_collator, MixupCollator):
                raise ValueError(
                    "teacher_cache=True stores the teacher's logits of each clean example, but MixupCollator mixes "
                    "the images the student sees, so the cached logits would belong to other images: turn "
                    "teacher_cache off with Mixup / CutMix (the teacher then sees the mixed batch)"
                )
            self.train_dataset = self._cache_teacher_logits(self.train_dataset)

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
        self.ema = (
            StudentEMA(self.accelerator.unwrap_model(self.model), args.ema_decay, args.ema_warmup)
            if args.ema_decay > 0
            else None
        )
        if self.ema is not None:
            self.add_callback(EMACallback(self))
        self.window = AccumulationWindow()

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

    def _prepare_teacher(self, teacher: nn.Module) -> nn.Module:
        return prepare_teacher(teacher, self.accelerator)

    def _build_teacher_input_converter(self, teacher_processor: Any | None) -> TeacherInputConverter | None:
        student_processor = self.processing_class
        if student_processor is None or teacher_processor is None:
            logger.info(
                "DTOKDTrainer: the teacher receives the student's pixel_values unchanged (%s image processor "
                "missing). Pass processing_class and teacher_processing_class to resize / re-normalise, or add "
                "a 'teacher_pixel_values' column.",
                "student" if student_processor is None else "teacher",
            )
            return None
        converter = TeacherInputConverter(
            PixelSpace.from_processor(student_processor), PixelSpace.from_processor(teacher_processor)
        )
        return None if converter.is_identity else converter

    def _cache_teacher_logits(self, dataset: Any) -> Any:
        """``teacher_cache=True``: ``dataset`` with the teacher's logits (as a live step computes them) as a column."""
        if not self.supports_teacher_cache:
            raise ValueError(
                f"teacher_cache=True caches the teacher's logits, but {type(self).__name__} needs more of the "
                "teacher at every step (features / boxes); set teacher_cache=False"
            )
        if dataset is None:
            raise ValueError("teacher_cache=True needs a train_dataset to cache the teacher's logits for")
        check_cacheable(dataset, self.data_collator)
        columns = ["pixel_values", *([TEACHER_PIXELS] if TEACHER_PIXELS in dataset.column_names else [])]

        def logits(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return self._teacher_logits({"pixel_values": batch["pixel_values"]}, batch.get(TEACHER_PIXELS))

        # every process together (no main_process_first: a sharded teacher needs all ranks in each forward)
        return add_teacher_logits(
            dataset, logits, columns, self.args.per_device_eval_batch_size, self.accelerator
        )

    def _check_objectives(self) -> None:
        names = self.objective_names
        if len(names) < 2 or len(set(names)) != len(names) or names[-1] != "task":
            raise ValueError(
                f"objective_names must be at least two distinct names ending with 'task', got {names}"
            )

    def _check_gradient_method_supported(self) -> None:
        check_backend_support(
            self._method_name(),
            self.args.gradient_placement,
            self.balancer.needs_gradients,
            self.balancer.owns_update,
            fsdp=self.is_fsdp_enabled,
            deepspeed=self.is_deepspeed_enabled,
            fp16=self.args.fp16,
            fsdp2=self._fsdp2,
            gram_parameters=self.args.gram_parameters,
            one_loss_parameters=self.args.one_loss_parameters,
            batched_gradients=self.args.batched_gradients,
        )

    def _representation_layer_to_use(self) -> str | None:
        """``gradient_placement="representation"``: the layer the per-loss gradients are taken at (checked)."""
        args = self.args
        if args.batched_gradients and len(self.objective_names) < 3:
            raise ValueError(
                f"batched_gradients batches the per-loss gradient calls of all objectives but the task; with "
                f"{len(self.objective_names)} objectives there is one call, nothing to batch. Leave it False"
            )
        if args.gradient_placement != "representation":
            return None
        if not isinstance(self.balancer, GramianBalancer):
            raise ValueError(
                f"gradient_placement='representation' needs a Gram method (a GramianBalancer); "
                f"{type(self.balancer).__name__} combines the per-loss parameter gradients itself. Use "
                "gradient_placement='parameters'"
            )
        student = self.accelerator.unwrap_model(self.model)
        return resolve_representation_layer(
            student,
            args.representation_layer,
            self.losses_from_logits,
            self.default_representation_layer(student),
        )

    def _check_dataset_labels(self, dataset: Any, name: str) -> None:
        columns = getattr(dataset, "column_names", None)
        if columns is None:  # a torch Dataset: labels are checked batch by batch instead
            return
        column = next((c for c in LABEL_COLUMNS if c in columns), None)
        if column is None:
            raise ValueError(
                f"{name} has no 'labels' or 'label' column (columns: {columns}); add the class index column"
            )
        values = np.asarray(dataset[column])
        self._check_label_values(values, f"{name} column {column!r}")

    def _check_label_values(self, values: np.ndarray, where: str) -> None:
        if values.size == 0:
            return
        n = num_labels(self.accelerator.unwrap_model(self.model))
        if np.issubdtype(values.dtype, np.floating) and values.ndim == 2:  # soft targets (Mixup / CutMix)
            if values.shape[1] != n or (values < 0).any():
                raise ValueError(
                    f"{where} holds soft targets of shape {values.shape} for a student with num_labels={n}; "
                    f"soft targets are non-negative class probabilities, one column per class ({n})"
                )
            return
        bad = values[((values < 0) & (values != IGNORE_INDEX)) | (values >= n)]
        if bad.size:
            raise ValueError(
                f"{where} holds label {bad.flat[0]} outside [0, {n}) for a student with num_labels={n}; "
                "fix the labels or build the student with the dataset's number of classes (an unlabelled "
                f"example, distilled only, takes the label {IGNORE_INDEX})"
            )

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        # the labels are ours to read even when the student's forward takes none (e.g. DeiT's two-head model)
        for column in (TEACHER_PIXELS, TEACHER_LOGITS, *LABEL_COLUMNS):
            if column not in self._signature_columns:
                self._signature_columns.append(column)

    # ------------------------------------------------------------------ forward pieces
    def _split_batch(
        self, inputs: dict[str, Any]
    ) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor | None]:
        labels = inputs.get("labels")
        if labels is None:
            raise ValueError(
                f"the batch has no 'labels' (keys: {sorted(inputs)}); the dataset needs a 'label' or 'labels' "
                "column with class indices"
            )
        if isinstance(labels, torch.Tensor) and labels.device.type == "cpu":  # checked without a device sync
            self._check_label_values(labels.numpy(), "the batch's 'labels'")
        inputs = dict(self._prepare_inputs(inputs))
        return inputs, inputs.pop("labels"), inputs.pop(TEACHER_PIXELS, None)

    def _teacher_logits(self, student_inputs: dict[str, Any], teacher_pixels: torch.Tensor | None) -> Any:
        """The frozen teacher's forward (no grad) on its inputs, turned into ``teacher_signal``."""
        with torch.no_grad(), self.compute_loss_context_manager():
            outputs = self.teacher(
                **self.teacher_model_inputs(student_inputs, teacher_pixels), **self.teacher_forward_kwargs
            )
        if self._fsdp2:  # a sharded teacher has no backward to free its gathered root
            reshard(self.teacher)
        return self.teacher_signal(outputs)

    def teacher_model_inputs(
        self, student_inputs: dict[str, Any], teacher_pixels: torch.Tensor | None
    ) -> dict[str, Any]:
        """The teacher's forward inputs: the ``teacher_pixel_values`` column, else the student's pixels
        converted to the teacher's size and normalisation (unchanged when the processors agree)."""
        if teacher_pixels is None:
            pixel_values = student_inputs["pixel_values"]
            teacher_pixels = (
                pixel_values if self.teacher_inputs is None else self.teacher_inputs(pixel_values)
            )
        return {"pixel_values": teacher_pixels}

    def teacher_signal(self, outputs: Any) -> Any:
        """What the objectives need of the teacher's output: by default its logits (mapped to the student's
        classes). Subclasses return more (e.g. stage features) and read it in ``objective_losses``."""
        logits = classification_logits(outputs)
        if self.teacher_label_index is not None:
            logits = logits[:, self.teacher_label_index.to(logits.device)]
        return logits.detach()

    def objective_losses(self, outputs: Any, teacher_logits: Any, labels: torch.Tensor) -> torch.Tensor:
        """The objectives from the student's whole output and the teacher's signal; by default
        ``compute_objective_losses`` of the logits."""
        return self.compute_objective_losses(classification_logits(outputs), teacher_logits, labels)

    def objective_descriptions(self) -> dict[str, str]:
        """What each objective is, for the model card."""
        return {
            "distill": f"T^2 KL(teacher || student) on the logits at T = {self.args.temperature}",
            "task": "cross-entropy with the labels"
            + (
                f", label smoothing {self.args.label_smoothing_factor}"
                if self.args.label_smoothing_factor
                else ""
            ),
        }

    def default_representation_layer(self, student: nn.Module) -> str | None:
        """``representation_layer="auto"`` for objectives not all computed from the logits: the layer every loss
        shares. None takes the family's entry of ``representation.FAMILY_LAYERS``."""
        return None

    def compute_objective_losses(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """One float32 loss per entry of ``objective_names``: here ``(L_distill, L_task)``."""
        distill = logit_kd_loss(student_logits, teacher_logits, self.args.temperature)
        task = task_cross_entropy(student_logits, labels, self.args.label_smoothing_factor)
        return torch.stack([distill, task])

    def reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` averaged over processes (as it is on one process)."""
        if self.accelerator.num_processes == 1:
            return tensor
        return self.accelerator.reduce(tensor.clone(), reduction="mean")

    # ------------------------------------------------------------------ the step
    def get_batch_samples(
        self, epoch_iterator: Any, num_batches: int, device: torch.device
    ) -> tuple[list, torch.Tensor | int | None]:
        """The Trainer's prefetch of one accumulation window; also counts its examples and labelled examples
        for exact window means (``window_means.py``). Batches without a ``labels`` tensor (detection
        targets) are not counted: their losses keep their own normalisation."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        self.window.counts = count_window(
            batch_samples, self.accelerator, self.args.average_tokens_across_devices
        )
        return batch_samples, num_items_in_batch

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """One micro-batch: split the batch, student, teacher, losses, the placement's backward, and on the
        window's last micro-batch the balancer's update."""
        model.train()
        if callable(getattr(self.optimizer, "train", None)):  # schedule-free optimizers
            self.optimizer.train()
        student_inputs, labels, teacher_pixels = self._split_batch(inputs)
        steps = self.current_gradient_accumulation_steps
        if not self.window.is_open:
            self._restore_skipped_step()
            self.tradeoff_log.start(self.state.global_step)
            self.window.open(model, len(self.objective_names), self.args.device)
            self.window.distillation_only = self._window_has_no_labels()
            self.placement.open_window(model)

        capture = self.placement.capture()
        capture(True)
        with self.compute_loss_context_manager():
            outputs = model(**student_inputs)
        capture(False)
        teacher_signal = self._teacher_signal_of(student_inputs, teacher_pixels)
        losses = self.objective_losses(outputs, teacher_signal, labels)
        if self.placement.needs_reach:
            self.placement.mark_reached(losses)
        scales = None
        if self.window.counts is not None:  # exact window means whatever the micro-batch counts
            scales = micro_batch_scales(labels, self.window.counts, len(losses))
            losses = losses * scales
        self.window.losses += losses.detach() / steps

        logged = self.placement.backward(losses, outputs, steps)
        if (
            self.balancer.needs_look_ahead
            and self.args.look_ahead == "same_batch"
            and not self.window.distillation_only
        ):
            self.window.batches.append((student_inputs, teacher_signal, labels, scales))
        if self.accelerator.sync_gradients:
            logged = self._close_window(logged)
        return logged

    def _teacher_signal_of(self, student_inputs: dict[str, Any], teacher_pixels: torch.Tensor | None) -> Any:
        """The teacher's signal for this micro-batch: the cached logits column, or a live teacher forward."""
        cached = student_inputs.pop(TEACHER_LOGITS, None)
        if cached is not None and self.args.teacher_cache:
            return cached
        return self._teacher_logits(student_inputs, teacher_pixels)

    def _close_window(self, logged: torch.Tensor) -> torch.Tensor:
        """Once per optimizer step: reduce the window's losses, the placement's update, metrics."""
        window = self.window
        window.close()
        window_losses = self.reduce_mean(window.losses)
        window.losses = window_losses
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

    def _drop_window_gradient(self) -> None:
        """``on_nonfinite_loss="skip_step"``: the window's optimizer and scheduler steps are not taken (see
        ``trainer/nonfinite.py``); the gradient is zeroed too, so the logged gradient norm is 0, not NaN."""
        for param in self.window.model.parameters():
            if param.grad is not None:
                param.grad.zero_()
        if self.balancer.handles_clipping:
            self.balancer.last_grad_norm = torch.zeros((), device=self.args.device)
        self._skipped_step_restores = [skip_next_call(self.optimizer)]
        if self.lr_scheduler is not None:
            self._skipped_step_restores.append(skip_next_call(self.lr_scheduler))
        logger.warning(
            "non-finite losses at step %d: its optimizer and scheduler steps are skipped (on_nonfinite_loss="
            "'skip_step')",
            self.state.global_step + 1,
        )

    @property
    def step_trace(self) -> StepTrace:
        """The per-step cosines and applied weights so far (``tradeoff_log.trace``)."""
        return self.tradeoff_log.trace

    @property
    def step_skipped(self) -> bool:
        """Whether this window's optimizer step is (or was) skipped: its one-shot skips are still recorded."""
        return bool(self._skipped_step_restores)

    def _restore_skipped_step(self) -> None:
        """Put back a ``step`` left disarmed (a scheduler the Trainer did not call, e.g. ReduceLROnPlateau)."""
        for restore in self._skipped_step_restores:
            restore()
        self._skipped_step_restores = []

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

    # ------------------------------------------------------------------ evaluation data
    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        """The Trainer's loader with a ``MixupCollator``'s ``base`` collator: evaluation sees clean batches."""
        with _training_only_collator_removed(self):
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset: Any) -> Any:
        with _training_only_collator_removed(self):
            return super().get_test_dataloader(test_dataset)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """DOT computes the whole update itself: its optimizer is momentum-free SGD, ``p <- p - lr .grad``."""
        if not self.balancer.owns_update or self.optimizer is not None:
            return super().create_optimizer(model) if model is not None else super().create_optimizer()
        if self.args.optim != TrainingArguments.optim:
            logger.warning(
                "method=%r replaces optim=%r with its own update rule (momentum-free SGD on the DOT direction)",
                self.args.method,
                self.args.optim,
            )
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            parameters, lr=self.args.learning_rate, momentum=0.0, weight_decay=0.0
        )
        return self.optimizer

    def _clip_grad_norm(self, model: nn.Module) -> torch.Tensor:
        """Methods that clip the per-loss gradients themselves report their pre-clip norm and skip the Trainer's."""
        if self.balancer.handles_clipping and self.balancer.last_grad_norm is not None:
            return self.balancer.last_grad_norm
        return super()._clip_grad_norm(model)

    def _look_ahead_update(self) -> None:
        """Amortized methods: losses of the same window after the optimizer step, then the pi update.

        The re-forward is a measurement: train mode like the training forward it is compared with (batch
        statistics, dropout), but normalisation layers' running statistics are restored afterwards."""
        if not self.window.batches:
            return
        model = self.window.model
        after = torch.zeros(len(self.objective_names), device=self.args.device)
        with torch.no_grad(), self.compute_loss_context_manager(), preserved_running_statistics(model):
            for student_inputs, teacher_logits, labels, scales in self.window.batches:
                losses = self.objective_losses(model(**student_inputs), teacher_logits, labels)
                after += losses if scales is None else losses * scales
        if self._fsdp2:  # before zero_grad, which must see the sharded parameters
            reshard(model)
        after = self.reduce_mean(after / len(self.window.batches))
        self.balancer.update(self.window.losses, after)
        self.window.batches = []

    # ------------------------------------------------------------------ evaluation
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The student's task loss (cross-entropy), used by ``evaluate`` / ``predict``."""
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        inputs.pop(TEACHER_PIXELS, None)
        inputs.pop(TEACHER_LOGITS, None)
        outputs = model(**inputs)
        loss = task_cross_entropy(classification_logits(outputs), labels, self.args.label_smoothing_factor)
        return (loss, outputs) if return_outputs else loss

    # ------------------------------------------------------------------ logging and checkpoints
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
        section = distillation_section(
            self.args,
            self._method_name(),
            self.teacher_name,
            self.objective_names,
            self.state.log_history,
            PLOT_NAME if os.path.isfile(plot) else None,
            fields=self.balancer.config_fields if self._balancer_from_config else ("temperature",),
            trainer=type(self).__name__,
            objectives=self.objective_descriptions(),
            signal_fields=self.signal_fields,
            warnings=run_health_warnings(
                int(self._nonfinite_losses.item()),
                sorted(
                    {
                        *nonfinite_parameters(self.accelerator.unwrap_model(self.model)),
                        *self._nonfinite_weight_names,
                    }
                ),
            ),
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

    def _method_name(self) -> str:
        """The name checkpoints record: the config's method, or the class of a custom balancer."""
        return self.args.method if self._balancer_from_config else f"custom:{type(self.balancer).__name__}"

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
            save_tradeoff_state(output_dir, self._method_name(), self.objective_names, state)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint:
            state = load_tradeoff_state(checkpoint, self._method_name(), self.objective_names)
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
                checkpoint, load_tradeoff_state(checkpoint, self._method_name(), self.objective_names)
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

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """``Trainer.evaluate``; with ``ema_decay`` the moving average is what is scored."""
        if self.ema is None:
            return super().evaluate(*args, **kwargs)
        with self.ema.swapped_in(self.accelerator.unwrap_model(self.model)):
            return super().evaluate(*args, **kwargs)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``; ``resume_from_checkpoint=True`` takes the newest *complete* checkpoint.

        A checkpoint whose save was interrupted (no ``trainer_state.json`` or trade-off state) is skipped
        with a warning; an explicit path to one is an error. A file of the chosen checkpoint that cannot be read
        (truncated, damaged) is an error naming it and the earlier checkpoint to resume from. The method, objectives and layout of the
        checkpoint's trade-off state must match this run.
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
                resume_from_checkpoint, self._method_name(), self.objective_names
            )  # names what lacks
            raise ValueError(
                f"checkpoint {resume_from_checkpoint} is incomplete (no {TRAINER_STATE_NAME}): its save did not "
                "finish. Resume from an earlier checkpoint, or pass resume_from_checkpoint=True to take the newest "
                "complete one"
            )
        if isinstance(resume_from_checkpoint, str):
            check_readable(resume_from_checkpoint)  # a damaged file is named before anything is loaded
        return super().train(resume_from_checkpoint, *args, **kwargs)


def load_teacher(
    teacher_model: nn.Module | str | None,
    args: DTOKDConfig,
    teacher_processing_class: Any | None,
    loader: Callable[..., nn.Module] = load_image_classifier,
    student: nn.Module | None = None,
) -> tuple[nn.Module, Any | None]:
    """The teacher instance (loaded with ``from_pretrained`` when given by Hub id / folder) and its processor;
    refused when it is ``student`` or shares a weight with it (before anything is frozen)."""
    teacher_model = teacher_model if teacher_model is not None else args.teacher_model_name_or_path
    if teacher_model is None:
        raise ValueError("no teacher: pass teacher_model=... or set DTOKDConfig.teacher_model_name_or_path")
    if isinstance(teacher_model, str):
        teacher_id = teacher_model
        teacher_model = loader(teacher_id, "teacher", **(args.teacher_model_init_kwargs or {}))
        teacher_model._hf_dtokd_loaded = True  # the init kwargs were applied
        if teacher_processing_class is None:
            teacher_processing_class = load_image_processor(teacher_id)
    elif args.teacher_model_init_kwargs and not getattr(teacher_model, "_hf_dtokd_loaded", False):
        raise ValueError(
            "teacher_model_init_kwargs is set but the teacher was given as an instance; the kwargs would be "
            "ignored. Pass the teacher as a Hub id / path, or drop the kwargs"
        )
    if student is not None:
        check_teacher_is_not_the_student(student, teacher_model)
    return teacher_model, teacher_processing_class


def _model_name(model: nn.Module) -> str:
    """A teacher instance's Hub id / folder when it has one, else its class name."""
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", "") or type(model).__name__


@contextlib.contextmanager
def _training_only_collator_removed(trainer: Trainer) -> Any:
    """Swap a training-only collator (``MixupCollator``: it mixes images and labels) for its ``base``."""
    from hf_dtokd.data.augmentation import MixupCollator  # the data package is not the trainer's import

    collator = trainer.data_collator
    if isinstance(collator, MixupCollator):
        trainer.data_collator = collator.base
    try:
        yield
    finally:
        trainer.data_collator = collator
