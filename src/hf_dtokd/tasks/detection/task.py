"""Object detection as a distillation task: DETR-family detectors (and YOLOS), matched query KD.

Objectives (each a named loss, ``losses/detection.py``): ``class_kd`` (temperature KL of matched query
logits), ``box_kd`` (confidence-weighted L1 + GIoU to the matched teacher boxes), with a token projector
``token_kd`` (ViDT-style matching of the matched queries' decoder states through a projector), and ``task``,
the student's own detection loss (``outputs.loss``: its Hungarian matching to the ground truth, weighted as its
config says; its ``loss_dict`` is logged by component as ``task_<name>``). Grouped (the paper's form) they are
the two objectives ``(sum of the KD terms, task)``; ungrouped, one objective per KD term and the task.

Labels are one dict per image (``class_labels``, normalised ``cxcywh`` ``boxes``), which the student's forward
takes: it computes its own loss. The detection losses keep their own normalisation (no window recount).
With unlabelled images in the micro-batch (``unlabelled.py``) the student runs a second forward on them without
labels: the KD terms are means over both forwards' matched queries, the task loss is the labelled forward's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

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
from hf_dtokd.tasks.detection.inputs import check_categories, check_detection_labels, collate_detection
from hf_dtokd.tasks.detection.metrics import DetectionMetrics
from hf_dtokd.tasks.detection.models import detection_predictions, is_softmax_head
from hf_dtokd.tasks.detection.unlabelled import split_unlabelled
from hf_dtokd.trainer.task import TEACHER_PIXELS, DistillationTask

KD_TERMS = ("class_kd", "box_kd", "token_kd")


class WithUnlabelled(NamedTuple):
    """The student's outputs on a micro-batch's labelled images and on its unlabelled images."""

    labelled: Any
    unlabelled: Any


class DetectionTask(DistillationTask):
    """Matched query KD and the detector's own loss (see the module docstring)."""

    signal_fields = ("box_threshold", "token_projector", "group_distillation")

    def __init__(self, args: Any, id2label: dict[int, str], projector: nn.Module | None = None) -> None:
        super().__init__(args)
        self.id2label = id2label  # the student's classes, named in the per-class AP
        self.projector = projector  # token KD's projector (inside the trainable module), or None
        self.box_threshold, self.group_distillation = args.box_threshold, args.group_distillation
        terms = KD_TERMS if projector is not None else KD_TERMS[:2]
        self.objective_names = ("distill", "task") if self.group_distillation else (*terms, "task")
        self._teacher_softmax: bool | None = None

    # ------------------------------------------------------------------ data
    def labels_help(self) -> str:
        return (
            "detection batches need one dict per image ({'class_labels', 'boxes'}): prepare the dataset with "
            "hf_dtokd.DetectionTransform"
        )

    def check_dataset(self, dataset: Any, name: str) -> None:
        """Class ids of a detection-layout dataset (``objects.category``), read from Arrow without decoding."""
        table = getattr(dataset, "data", None)
        if table is None or "objects" not in getattr(dataset, "column_names", []) or self.student is None:
            return  # batches are checked one by one
        import pyarrow.compute as pc

        objects = table.column("objects").combine_chunks()
        categories = pc.list_flatten(objects.field("category")).to_numpy(zero_copy_only=False)
        check_categories(categories, num_labels(self.student), f"{name} objects")

    def check_batch_labels(self, labels: Any) -> None:
        if labels is None:
            raise ValueError(f"the batch has no 'labels'; {self.labels_help()}")
        check_detection_labels(labels, num_labels(self.student), "the batch's labels")

    def split_batch(self, inputs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        return inputs, inputs["labels"]  # the student's forward computes its own loss

    def teacher_model_inputs(
        self, student_inputs: dict[str, Any], teacher_pixels: torch.Tensor | None
    ) -> dict[str, Any]:
        inputs = super().teacher_model_inputs(student_inputs, teacher_pixels)
        mask = student_inputs.get("pixel_mask")
        if mask is not None and mask.shape[-2:] == inputs["pixel_values"].shape[-2:]:
            inputs["pixel_mask"] = mask
        return inputs

    # ------------------------------------------------------------------ losses
    def student_forward(self, model: nn.Module, student_inputs: dict[str, Any]) -> Any:
        """The labelled images' forward (with labels: the detector's own loss) and, when the micro-batch has
        unlabelled images, their forward without labels (``WithUnlabelled``)."""
        labelled, unlabelled = split_unlabelled(student_inputs)
        outputs = model(**labelled)
        return outputs if not unlabelled else WithUnlabelled(outputs, model(**unlabelled))

    def teacher_signal(self, outputs: Any) -> tuple[torch.Tensor, ...]:
        """Teacher query logits (mapped to the student's classes), boxes, confidences (and query states)."""
        assert self.teacher is not None, "attach() first"
        logits, boxes = detection_predictions(outputs)
        if self._teacher_softmax is None:
            self._teacher_softmax = is_softmax_head(logits, int(self.teacher.config.num_labels))
        logits = self.teacher.map_classes(logits, keep_last=self._teacher_softmax)  # "no object" stays last
        confidence, _ = detection_scores(logits, self._teacher_softmax)
        signal = (logits.detach(), boxes.detach(), confidence.detach())
        if self.projector is not None:
            signal += (query_states(outputs, boxes.shape[1]).detach(),)
        return signal

    def objective_descriptions(self) -> dict[str, str]:
        terms = {
            "class_kd": f"T^2 KL(teacher || student) on Hungarian-matched queries at T = {self.args.temperature}",
            "box_kd": f"L1 + 1 - GIoU to matched teacher boxes of confidence >= {self.box_threshold}",
            "token_kd": f"matched decoder-query states through a {self.args.token_projector} projector",
        }
        kept = [name for name in terms if self.projector is not None or name != "token_kd"]
        task = {"task": "the student detector's own loss (outputs.loss)"}
        if self.group_distillation:
            return {"distill": " + ".join(terms[name] for name in kept), **task}
        return {**{name: terms[name] for name in kept}, **task}

    def objective_losses(self, outputs: Any, teacher_signal: Any, labels: Any) -> torch.Tensor:
        teacher_logits, teacher_boxes, teacher_confidence = teacher_signal[:3]
        parts = tuple(outputs) if isinstance(outputs, WithUnlabelled) else (outputs,)
        outputs = parts[0]  # the labelled images': the task loss
        predictions = [detection_predictions(part) for part in parts]
        logits = torch.cat([part_logits for part_logits, _ in predictions])
        boxes = torch.cat([part_boxes for _, part_boxes in predictions])
        student_softmax = is_softmax_head(logits, num_labels(self.student))
        if student_softmax != self._teacher_softmax:
            raise ValueError(
                "the student and the teacher have different classification heads (one softmax with 'no object', "
                "one sigmoid); class KD compares like with like: pair detectors of the same head kind"
            )
        matches = match_to_teacher(logits, boxes, teacher_logits, teacher_boxes, student_softmax)
        terms = [
            class_kd_loss(logits, teacher_logits, matches, self.args.temperature, student_softmax),
            box_kd_loss(boxes, teacher_boxes, teacher_confidence, matches, self.box_threshold),
        ]
        if self.projector is not None:
            states = torch.cat([query_states(part, boxes.shape[1]) for part in parts])
            terms.append(query_token_kd_loss(self.projector, states, teacher_signal[3], matches))
        task = outputs["loss"].float()
        for name, value in outputs["loss_dict"].items():
            self.record_part(f"task_{name}", value)
        if self.group_distillation:  # the parts of the grouped objective, logged by name
            for name, term in zip(KD_TERMS, terms):
                self.record_part(f"{name}_loss", term)
            return torch.stack([sum(terms), task])
        return torch.stack([*terms, task])

    # ------------------------------------------------------------------ evaluation
    def evaluation_loss(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        """The student's detection loss; the outputs kept for metrics are its logits and boxes."""
        inputs = dict(inputs)
        inputs.pop(TEACHER_PIXELS, None)
        outputs = model(**inputs)
        logits, boxes = detection_predictions(outputs)
        return outputs["loss"], {"loss": outputs["loss"], "logits": logits, "pred_boxes": boxes}

    def default_metrics(self, processing_class: Any) -> Callable[..., dict[str, float]] | None:
        if processing_class is None:  # outputs cannot be turned into boxes without the image processor
            return None
        return DetectionMetrics(processing_class, self.id2label)

    def default_collator(self) -> Callable[..., Any] | None:
        return collate_detection
