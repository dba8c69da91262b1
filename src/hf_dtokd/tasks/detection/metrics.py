"""COCO-style detection metrics for ``Trainer.evaluate``: mAP, mAP50, mAP75, per-class AP, mAR@100.

torchmetrics' ``MeanAveragePrecision`` with the ``faster_coco_eval`` backend does the COCO evaluation;
the model's own image processor turns raw outputs into scored boxes
(``post_process_object_detection``: softmax heads drop "no object", sigmoid heads take the top
query-class pairs), in pixels of each image's ``orig_size``, so that COCO's small / medium / large
areas mean what they say. Expects ``eval_do_concat_batches=False`` (the detection trainer sets it):
predictions arrive as one ``(logits, pred_boxes)`` tuple per batch, labels as per-image dicts.

The IoU and recall thresholds are COCO's own (``pycocotools.COCOeval``: float64 ``np.linspace``), not
torchmetrics' float32 defaults: with those, a recall that lands on ``k / 100`` looks up another point
of the precision curve than COCO does (AP differences up to a few 1e-3). The values are returned
unrounded; round where a table is printed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_convert
from transformers import EvalPrediction
from transformers.utils import ModelOutput

#: COCO's thresholds exactly as ``pycocotools.cocoeval.Params`` builds them (float64).
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True).tolist()
COCO_RECALL_THRESHOLDS = np.linspace(
    0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True
).tolist()

SUMMARY = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100")


def _absolute_xyxy(boxes: Any, orig_size: Any) -> torch.Tensor:
    """Normalised ``cxcywh`` -> ``xyxy`` pixels of an ``(height, width)`` image."""
    boxes = torch.as_tensor(np.asarray(boxes), dtype=torch.float32).reshape(-1, 4)
    height, width = (float(v) for v in np.asarray(orig_size))
    return box_convert(boxes, "cxcywh", "xyxy") * torch.tensor([width, height, width, height])


def _logits_and_boxes(batch: tuple) -> tuple[np.ndarray, np.ndarray]:
    """The first two arrays of a batch's outputs: DetectionKDTrainer keeps ``(logits, pred_boxes)``; the plain
    Trainer passes the whole output, ``(loss_dict, logits, pred_boxes, ...)``."""
    arrays = [np.asarray(x) for x in batch if isinstance(x, (np.ndarray, torch.Tensor))][:2]
    if len(arrays) < 2 or arrays[1].shape[-1] != 4 or arrays[0].shape[:2] != arrays[1].shape[:2]:
        raise ValueError(
            "detection metrics expect (logits, pred_boxes) per batch, got arrays of shapes "
            f"{[a.shape for a in arrays[:3]]}; evaluate a DETR-family detector"
        )
    return arrays[0], arrays[1]


class DetectionMetrics:
    """``compute_metrics`` for detection (see module).

    Args:
        processor: the student's image processor (its ``post_process_object_detection`` is used).
        id2label: class names for the per-class APs (``map_<name>``).
        threshold: score below which predictions are dropped before the evaluation (0 keeps all, as COCO
            evaluation expects ranked detections).
    """

    def __init__(
        self, processor: Any, id2label: dict[int, str] | None = None, threshold: float = 0.0
    ) -> None:
        if not hasattr(processor, "post_process_object_detection"):
            raise ValueError(
                f"detection metrics need the detector's image processor (with post_process_object_detection); got "
                f"{type(processor).__name__}. Pass processing_class=AutoImageProcessor.from_pretrained(<student>)"
            )
        self.processor, self.id2label, self.threshold = processor, id2label or {}, threshold

    def __call__(self, evaluation: EvalPrediction) -> dict[str, float]:
        predictions, targets = evaluation.predictions, evaluation.label_ids
        if not isinstance(predictions, list) or (
            predictions and not isinstance(predictions[0], (tuple, list))
        ):
            raise ValueError(
                "detection metrics need per-batch predictions; set eval_do_concat_batches=False in the config "
                "(DetectionKDTrainer does)"
            )
        metric = MeanAveragePrecision(
            box_format="xyxy",
            class_metrics=True,
            backend="faster_coco_eval",
            iou_thresholds=COCO_IOU_THRESHOLDS,
            rec_thresholds=COCO_RECALL_THRESHOLDS,
        )
        for batch_predictions, batch_targets in zip(predictions, targets):
            sizes = torch.tensor(np.stack([np.asarray(t["orig_size"]) for t in batch_targets]))
            logits, boxes = _logits_and_boxes(batch_predictions)
            outputs = ModelOutput(logits=torch.as_tensor(logits), pred_boxes=torch.as_tensor(boxes))
            results = self.processor.post_process_object_detection(
                outputs, threshold=self.threshold, target_sizes=sizes
            )
            metric.update(
                [{"boxes": r["boxes"], "scores": r["scores"], "labels": r["labels"]} for r in results],
                [
                    {
                        "boxes": _absolute_xyxy(t["boxes"], t["orig_size"]),
                        "labels": torch.as_tensor(np.asarray(t["class_labels"]), dtype=torch.long),
                    }
                    for t in batch_targets
                ],
            )
        computed = metric.compute()
        metrics = {name: float(computed[name]) for name in SUMMARY}
        classes = computed["classes"].reshape(-1).tolist()
        per_class = computed["map_per_class"].reshape(-1).tolist()
        for class_id, value in zip(classes, per_class):
            name = self.id2label.get(int(class_id), str(int(class_id)))
            metrics[f"map_{name}"] = float(value)
        return metrics
