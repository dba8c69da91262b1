"""DetectionKDTrainer: the engine on the detection task (``task.py``), for DETR-family detectors and YOLOS.

The student's forward receives the labels, so every rank computes the detection loss once per micro-batch
(DETR-family losses all-reduce the box count inside); the teacher's forward gets the same pixels (and mask),
or the ``teacher_pixel_values`` column when its image size or normalisation differs. Query counts may differ:
the matching keeps the teacher's ``min(Q_s, Q_t)`` most confident queries. With a token projector the trainable
module is ``StudentWithProjectors`` (student + projector): saving and pushing write the student alone,
checkpoints carry ``projectors.safetensors``. With ``unlabelled_dataset`` each micro-batch also distils on images
without labels (``unlabelled.py``). Evaluation reports COCO mAP through ``DetectionMetrics``; the
per-image targets are gathered as whole objects across processes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from hf_dtokd.signals.projectors import build_projector
from hf_dtokd.signals.signal_config import DetectionKDConfig, as_signal_config
from hf_dtokd.signals.student_with_projectors import ProjectorCheckpointsMixin, StudentWithProjectors
from hf_dtokd.tasks.detection.models import load_object_detector
from hf_dtokd.tasks.detection.task import DetectionTask
from hf_dtokd.tasks.detection.unlabelled import (
    UNLABELLED_PREFIX,
    UnlabelledImages,
    split_unlabelled,
    stacked_images,
)
from hf_dtokd.trainer.dtokd_config import DTOKDConfig
from hf_dtokd.trainer.engine import DistillationTrainer
from hf_dtokd.trainer.teacher import load_teacher

logger = logging.getLogger(__name__)


class DetectionKDTrainer(ProjectorCheckpointsMixin, DistillationTrainer):
    """Distillation of object detectors (``AutoModelForObjectDetection``: DETR family, YOLOS).

    Args:
        model: the student detector.
        teacher_model: a detector instance, Hub id or folder.
        box_threshold: teacher confidence below which a matched box does not enter box KD.
        token_projector: add token KD through this projector (``projectors.PROJECTORS``), or None.
        group_distillation: balance ``(sum of the KD terms, task)`` (the default) or, False, one objective
            per KD term and the task.
        unlabelled_dataset: images without labels (rows with ``pixel_values``, prepared like the training
            images, e.g. with ``UnlabelledImageTransform``), of which every micro-batch also distils
            ``unlabelled_batch_size`` per device (default: the train batch size): the KD terms are means over
            the labelled and the unlabelled images, the task loss reads the labelled ones.
        **kwargs: as for [`DTOKDTrainer`]. ``processing_class`` (the student's image processor) turns
            outputs into boxes for the mAP; ``data_collator`` defaults to ``collate_detection`` and
            ``compute_metrics`` to ``DetectionMetrics`` (mAP, mAP50, mAP75, per-class AP).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        args: DTOKDConfig | None = None,
        teacher_model: nn.Module | str | None = None,
        box_threshold: float | None = None,
        group_distillation: bool | None = None,
        token_projector: str | None = None,
        teacher_processing_class: Any | None = None,
        unlabelled_dataset: Any | None = None,
        **kwargs: Any,
    ) -> None:
        if model is None or args is None:
            raise ValueError(
                "DetectionKDTrainer needs the student detector (model=...) and a DTOKDConfig (args=...)"
            )
        args = as_signal_config(
            args,
            DetectionKDConfig,
            box_threshold=box_threshold,
            group_distillation=group_distillation,
            token_projector=token_projector,
        )
        if not hasattr(model.config, "num_labels") or "ObjectDetection" not in type(model).__name__:
            raise ValueError(
                f"DetectionKDTrainer needs an object detector (AutoModelForObjectDetection), got "
                f"{type(model).__name__}; for image classifiers use DTOKDTrainer"
            )
        if args.gradient_placement == "representation" and args.representation_layer == "auto":
            raise ValueError(
                "gradient_placement='representation' has no automatic layer for detectors (RT-DETR-style decoders "
                "refine boxes layer by layer, so no single layer carries every loss); name one in "
                "representation_layer (e.g. a DETR decoder's final layer norm) or use gradient_placement='parameters'"
            )
        if unlabelled_dataset is None and args.unlabelled_batch_size is not None:
            raise ValueError(
                f"unlabelled_batch_size={args.unlabelled_batch_size} without unlabelled images: pass "
                "unlabelled_dataset=... to DetectionKDTrainer, or leave unlabelled_batch_size unset"
            )
        if unlabelled_dataset is not None and args.gradient_placement == "representation":
            raise ValueError(
                "unlabelled_dataset runs a second student forward per micro-batch, which gradient_placement="
                "'representation' (one captured layer per forward) does not support; use gradient_placement="
                "'parameters'"
            )
        teacher, teacher_processing_class = load_teacher(
            teacher_model, args, teacher_processing_class, load_object_detector, student=model
        )
        self.box_threshold, self.group_distillation = args.box_threshold, args.group_distillation
        self.token_kd = args.token_projector is not None
        if args.eval_do_concat_batches:
            logger.info(
                "DetectionKDTrainer sets eval_do_concat_batches=False: predictions are kept per batch"
            )
            args.eval_do_concat_batches = False
        _check_transformed_columns(args, kwargs.get("train_dataset"), kwargs.get("eval_dataset"))
        if kwargs.get("compute_metrics") is None and kwargs.get("processing_class") is None:
            if kwargs.get("eval_dataset") is not None:
                raise ValueError(
                    "evaluating a detector needs its image processor to turn outputs into boxes: pass "
                    "processing_class=AutoImageProcessor.from_pretrained(<student>) or compute_metrics=..."
                )
        projector = None
        if self.token_kd:
            projector = build_projector(args.token_projector, query_width(model), query_width(teacher))
            model = StudentWithProjectors(
                model, nn.ModuleList([projector]), pairs=[], output_hidden_states=False
            )
        super().__init__(
            model=model,
            args=args,
            task=DetectionTask(args, dict(model.config.id2label), projector),
            teacher_model=teacher,
            teacher_loader=load_object_detector,
            teacher_processing_class=teacher_processing_class,
            **kwargs,
        )
        #: the unlabelled images each micro-batch draws (None: labelled images only)
        self.unlabelled_images = None
        if unlabelled_dataset is not None:
            # the effective size, as the config saved with the run and the model card report it
            args.unlabelled_batch_size = args.unlabelled_batch_size or args.per_device_train_batch_size
            self.task.signal_fields = (*self.task.signal_fields, "unlabelled_batch_size")
            self.unlabelled_images = UnlabelledImages(
                unlabelled_dataset,
                args.unlabelled_batch_size,
                args.data_seed if args.data_seed is not None else args.seed,
                self.accelerator.process_index,
                self.accelerator.num_processes,
            )
        self._unlabelled_drawn: int | None = None

    # ------------------------------------------------------------------ unlabelled images
    def train(self, *args: Any, **kwargs: Any) -> Any:
        self._unlabelled_drawn = None  # counted again from the (resumed) global step
        return super().train(*args, **kwargs)

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """The engine's step, with this micro-batch's unlabelled images added to the batch: micro-batch ``k`` of
        the run (``global_step * gradient_accumulation_steps`` at the start, so a resumed run draws what the
        uninterrupted run would have)."""
        if self.unlabelled_images is not None:
            if self._unlabelled_drawn is None:
                self._unlabelled_drawn = self.state.global_step * self.args.gradient_accumulation_steps
            images = self.unlabelled_images.batch(self._unlabelled_drawn)
            self._unlabelled_drawn += 1
            inputs = {**inputs, **{UNLABELLED_PREFIX + key: value for key, value in images.items()}}
        return super().training_step(model, inputs, num_items_in_batch)

    def teacher_signal_of(self, student_inputs: dict[str, Any], teacher_pixels: torch.Tensor | None) -> Any:
        """The teacher's signal on the labelled images, then on the unlabelled ones (from the student's pixels,
        converted by the teacher), concatenated in the order of the student's predictions.

        One teacher forward over both sets when they stack (one image size, a pixel mask on both or neither, no
        ``teacher_pixel_values`` column), else one forward each: the teacher is in eval mode, so an image's
        predictions do not depend on the batch it is in, and one launch instead of two matters on a GPU.
        """
        labelled, unlabelled = split_unlabelled(student_inputs)
        if not unlabelled:
            return super().teacher_signal_of(labelled, teacher_pixels)
        if teacher_pixels is None and (both := stacked_images(labelled, unlabelled)) is not None:
            return super().teacher_signal_of(both, None)
        signal = super().teacher_signal_of(labelled, teacher_pixels)
        extra = super().teacher_signal_of(unlabelled, None)
        return tuple(torch.cat(pair) for pair in zip(signal, extra))

    # ------------------------------------------------------------------ evaluation
    def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
        """The Trainer's loop, gathering each batch's per-image target dicts as whole objects (see
        ``_gather_for_metrics``). Set on every call: the Trainer resets ``gather_function`` after each loop."""
        self.gather_function = self._gather_for_metrics
        return super().evaluation_loop(*args, **kwargs)

    def _gather_for_metrics(self, data: Any) -> Any:
        """accelerate's ``gather_for_metrics``, except for a batch's list of per-image target dicts.

        accelerate treats every tensor as batch-major: on the last, short batch it cuts *each* tensor of a
        target dict to the batch's remainder (an image's ``orig_size`` (2,) became (1,), its boxes lost
        rows), and under DDP it concatenates the dicts' tensors across ranks. Gathered as objects, the
        targets become one list of per-image dicts from all ranks, trimmed per image.
        """
        if isinstance(data, list) and data and all(isinstance(target, Mapping) for target in data):
            return self.accelerator.gather_for_metrics(data, use_gather_object=True)
        return self.accelerator.gather_for_metrics(data)


def query_width(model: nn.Module) -> int:
    """The width of a detector's query states: ``d_model`` (DETR family) or ``hidden_size`` (YOLOS)."""
    config = model.config
    width = getattr(config, "d_model", None) or getattr(config, "hidden_size", None)
    if width is None:
        raise ValueError(
            f"{type(model).__name__}'s config has neither d_model nor hidden_size; token KD needs one"
        )
    return int(width)


def _check_transformed_columns(args: DTOKDConfig, *datasets: Any) -> None:
    """A dataset with an on-the-fly transform reads raw columns the Trainer would remove first."""
    for dataset in datasets:
        transform = getattr(dataset, "format", {}).get("format_kwargs", {}).get("transform")
        if transform is not None and args.remove_unused_columns:
            raise ValueError(
                "the dataset has an on-the-fly transform (with_transform) that reads columns such as 'image' and "
                "'objects', which remove_unused_columns=True drops before it runs; set remove_unused_columns=False"
            )
