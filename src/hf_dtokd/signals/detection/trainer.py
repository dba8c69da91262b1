"""DetectionKDTrainer: distilling DETR-family detectors, the trade-off set by DTO-KD (or any method).

Objectives (each a named loss, ``losses/detection.py``): ``class_kd`` (temperature KL of matched query
logits), ``box_kd`` (confidence-weighted L1 + GIoU to the matched teacher boxes), with
``token_projector`` set ``token_kd`` (ViDT-style matching of the matched queries' decoder states
through a projector), and ``task``, the
student's own detection loss (``outputs.loss``: its Hungarian matching to the ground truth, weighted
as its config says; its ``loss_dict`` is logged by component as ``task_<name>``). By default
(``group_distillation=True``, the paper's form) they are the two DTO-KD objectives ``(sum of the KD terms,
task)``; ``group_distillation=False`` balances one objective per KD term and the task.
With a projector the trainable module is ``StudentWithProjectors`` (student + projector): saving and
pushing write the student alone, checkpoints carry ``projectors.safetensors``.

The student's forward receives the labels, so every rank computes the detection loss once per
micro-batch (DETR-family losses all-reduce the box count inside); the teacher's forward gets the
same pixels (and mask), or the ``teacher_pixel_values`` column when its image size or normalisation
differs. Query counts may differ: the matching keeps the teacher's ``min(Q_s, Q_t)`` most confident
queries. Evaluation reports COCO mAP through ``DetectionMetrics``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from hf_dtokd.losses import (
    box_kd_loss,
    class_kd_loss,
    detection_scores,
    match_to_teacher,
    query_states,
    query_token_kd_loss,
)
from hf_dtokd.models.classification import num_labels
from hf_dtokd.signals.detection.inputs import check_categories, check_detection_labels, collate_detection
from hf_dtokd.signals.detection.metrics import DetectionMetrics
from hf_dtokd.signals.detection.models import detection_predictions, is_softmax_head, load_object_detector
from hf_dtokd.signals.projectors import build_projector
from hf_dtokd.signals.signal_config import DetectionKDConfig, as_signal_config
from hf_dtokd.signals.student_with_projectors import ProjectorCheckpointsMixin, StudentWithProjectors
from hf_dtokd.trainer.dtokd_config import DTOKDConfig
from hf_dtokd.trainer.dtokd_trainer import DTOKDTrainer, load_teacher

logger = logging.getLogger(__name__)


class DetectionKDTrainer(ProjectorCheckpointsMixin, DTOKDTrainer):
    """A [`DTOKDTrainer`] for object detectors (``AutoModelForObjectDetection``: DETR family, YOLOS).

    Args:
        model: the student detector.
        teacher_model: a detector instance, Hub id or folder.
        box_threshold: teacher confidence below which a matched box does not enter box KD.
        token_projector: add token KD through this projector (``projectors.PROJECTORS``), or None.
        group_distillation: balance ``(sum of the KD terms, task)`` (the default) or, False, one objective
            per KD term and the task.
        **kwargs: as for [`DTOKDTrainer`]. ``processing_class`` (the student's image processor) turns
            outputs into boxes for the mAP; ``data_collator`` defaults to ``collate_detection`` and
            ``compute_metrics`` to ``DetectionMetrics`` (mAP, mAP50, mAP75, per-class AP).
    """

    supports_teacher_cache = False  # the objectives need the teacher's features / boxes every step
    signal_fields = ("box_threshold", "token_projector", "group_distillation")

    losses_from_logits = False

    def __init__(
        self,
        model: nn.Module | None = None,
        args: DTOKDConfig | None = None,
        teacher_model: nn.Module | str | None = None,
        box_threshold: float | None = None,
        group_distillation: bool | None = None,
        token_projector: str | None = None,
        teacher_processing_class: Any | None = None,
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
        box_threshold, group_distillation = args.box_threshold, args.group_distillation
        token_projector = args.token_projector
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
        teacher, teacher_processing_class = load_teacher(
            teacher_model, args, teacher_processing_class, loader=load_object_detector, student=model
        )
        self.box_threshold, self.group_distillation = box_threshold, group_distillation
        self.token_kd = token_projector is not None
        terms = ("class_kd", "box_kd", "token_kd") if self.token_kd else ("class_kd", "box_kd")
        self.objective_names = ("distill", "task") if group_distillation else (*terms, "task")
        if args.eval_do_concat_batches:
            logger.info(
                "DetectionKDTrainer sets eval_do_concat_batches=False: predictions are kept per batch"
            )
            args.eval_do_concat_batches = False
        _check_transformed_columns(args, kwargs.get("train_dataset"), kwargs.get("eval_dataset"))
        kwargs.setdefault("data_collator", collate_detection)
        if kwargs.get("compute_metrics") is None:
            processor = kwargs.get("processing_class")
            if processor is not None:
                kwargs["compute_metrics"] = DetectionMetrics(processor, model.config.id2label)
            elif kwargs.get("eval_dataset") is not None:
                raise ValueError(
                    "evaluating a detector needs its image processor to turn outputs into boxes: pass "
                    "processing_class=AutoImageProcessor.from_pretrained(<student>) or compute_metrics=..."
                )
        if self.token_kd:
            projector = build_projector(token_projector, query_width(model), query_width(teacher))
            model = StudentWithProjectors(
                model, nn.ModuleList([projector]), pairs=[], output_hidden_states=False
            )
        super().__init__(
            model=model,
            args=args,
            teacher_model=teacher,
            teacher_processing_class=teacher_processing_class,
            **kwargs,
        )
        self._teacher_softmax: bool | None = None

    # ------------------------------------------------------------------ data
    def _check_dataset_labels(self, dataset: Any, name: str) -> None:
        """Class ids of a detection-layout dataset (``objects.category``), read from Arrow without decoding."""
        table = getattr(dataset, "data", None)
        if table is None or "objects" not in getattr(dataset, "column_names", []):
            return  # batches are checked one by one
        import pyarrow.compute as pc

        objects = table.column("objects").combine_chunks()
        categories = pc.list_flatten(objects.field("category")).to_numpy(zero_copy_only=False)
        check_categories(categories, num_labels(self.accelerator.unwrap_model(self.model)), f"{name} objects")

    def _split_batch(self, inputs: dict[str, Any]) -> tuple[dict[str, Any], Any, torch.Tensor | None]:
        labels = inputs.get("labels")
        if labels is None:
            raise ValueError(
                f"the batch has no 'labels' (keys: {sorted(inputs)}); detection batches need one dict per image "
                "({'class_labels', 'boxes'}): prepare the dataset with hf_dtokd.DetectionTransform"
            )
        check_detection_labels(
            labels, num_labels(self.accelerator.unwrap_model(self.model)), "the batch's labels"
        )
        inputs = dict(self._prepare_inputs(inputs))
        teacher_pixels = inputs.pop("teacher_pixel_values", None)
        return inputs, inputs["labels"], teacher_pixels  # the student's forward computes its own loss

    def teacher_model_inputs(
        self, student_inputs: dict[str, Any], teacher_pixels: torch.Tensor | None
    ) -> dict:
        inputs = super().teacher_model_inputs(student_inputs, teacher_pixels)
        mask = student_inputs.get("pixel_mask")
        if mask is not None and mask.shape[-2:] == inputs["pixel_values"].shape[-2:]:
            inputs["pixel_mask"] = mask
        return inputs

    # ------------------------------------------------------------------ losses
    def teacher_signal(self, outputs: Any) -> tuple[torch.Tensor, ...]:
        """Teacher query logits (mapped to the student's classes), boxes, confidences (and query states)."""
        logits, boxes = detection_predictions(outputs)
        if self._teacher_softmax is None:
            self._teacher_softmax = is_softmax_head(logits, num_labels(self.teacher))
        if self.teacher_label_index is not None:
            index = self.teacher_label_index.to(logits.device)
            if self._teacher_softmax:  # keep the "no object" output last
                index = torch.cat([index, index.new_tensor([logits.shape[-1] - 1])])
            logits = logits[..., index]
        confidence, _ = detection_scores(logits, self._teacher_softmax)
        signal = (logits.detach(), boxes.detach(), confidence.detach())
        if self.token_kd:
            signal += (query_states(outputs, boxes.shape[1]).detach(),)
        return signal

    def objective_descriptions(self) -> dict[str, str]:
        terms = {
            "class_kd": f"T^2 KL(teacher || student) on Hungarian-matched queries at T = {self.args.temperature}",
            "box_kd": f"L1 + 1 - GIoU to matched teacher boxes of confidence >= {self.box_threshold}",
            "token_kd": f"matched decoder-query states through a {self.args.token_projector} projector",
        }
        task = {"task": "the student detector's own loss (outputs.loss)"}
        if self.group_distillation:
            kept = [name for name in terms if self.token_kd or name != "token_kd"]
            return {"distill": " + ".join(terms[name] for name in kept), **task}
        return {**{name: text for name, text in terms.items() if name in self.objective_names}, **task}

    def objective_losses(self, outputs: Any, teacher_signal: Any, labels: Any) -> torch.Tensor:
        teacher_logits, teacher_boxes, teacher_confidence = teacher_signal[:3]
        logits, boxes = detection_predictions(outputs)
        student_softmax = is_softmax_head(logits, num_labels(self.accelerator.unwrap_model(self.model)))
        if student_softmax != self._teacher_softmax:
            raise ValueError(
                "the student and the teacher have different classification heads (one softmax with 'no object', "
                "one sigmoid); class KD compares like with like: pair detectors of the same head kind"
            )
        matches = match_to_teacher(logits, boxes, teacher_logits, teacher_boxes, student_softmax)
        class_kd = class_kd_loss(logits, teacher_logits, matches, self.args.temperature, student_softmax)
        box_kd = box_kd_loss(boxes, teacher_boxes, teacher_confidence, matches, self.box_threshold)
        terms = [class_kd, box_kd]
        if self.token_kd:
            projector = self._wrapper().projectors[0]
            states = query_states(outputs, boxes.shape[1])
            terms.append(query_token_kd_loss(projector, states, teacher_signal[3], matches))
        task = outputs["loss"].float()
        if torch.is_grad_enabled():  # the training forward (not the look-ahead's re-evaluation)
            for name, value in outputs["loss_dict"].items():
                self.tradeoff_log.record(f"task_{name}", value.detach().float())
        if self.group_distillation:
            if torch.is_grad_enabled():  # the parts of the grouped objective, logged by name
                for name, term in zip(("class_kd", "box_kd", "token_kd"), terms):
                    self.tradeoff_log.record(f"{name}_loss", term.detach())
            return torch.stack([sum(terms), task])
        return torch.stack([*terms, task])

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

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The student's detection loss; the outputs kept for metrics are its logits and boxes."""
        inputs = dict(inputs)
        inputs.pop("teacher_pixel_values", None)
        outputs = model(**inputs)
        loss = outputs["loss"]
        logits, boxes = detection_predictions(outputs)
        return (loss, {"loss": loss, "logits": logits, "pred_boxes": boxes}) if return_outputs else loss


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
