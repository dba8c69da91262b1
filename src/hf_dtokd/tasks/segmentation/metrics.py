"""mIoU, per-class IoU and pixel accuracy of predicted masks, with torchmetrics.

``SegmentationMetrics`` is a Trainer ``compute_metrics``: the predictions are the argmax masks at the label size
(``SegmentationTask.evaluation_loss``), the label ids the masks. Pixels labelled ``ignore_index`` are left out.
IoU per class is ``TP / (TP + FP + FN)`` over the whole evaluation set (torchmetrics'
``MulticlassJaccardIndex``, ``average="none"``); a class absent from both predictions and labels has no IoU
(NaN) and mIoU is the mean over the others, the convention of evaluate's ``mean_iou``. Pixel accuracy is
``MulticlassAccuracy(average="micro")``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex


class SegmentationMetrics:
    """``compute_metrics`` for semantic segmentation: ``mean_iou``, ``overall_accuracy``, ``iou_<class>``."""

    def __init__(self, id2label: dict[int, str], ignore_index: int = 255) -> None:
        self.id2label = {int(k): v for k, v in id2label.items()}
        self.ignore_index = ignore_index

    def __call__(self, eval_prediction: Any) -> dict[str, float]:
        predictions = eval_prediction.predictions
        labels = eval_prediction.label_ids
        if isinstance(predictions, (tuple, list)):
            predictions = predictions[0]
        predictions = torch.as_tensor(np.asarray(predictions)).long()
        labels = torch.as_tensor(np.asarray(labels)).long()
        if predictions.shape != labels.shape:
            raise ValueError(
                f"predicted masks {tuple(predictions.shape)} and label masks {tuple(labels.shape)} differ in shape; "
                "SegmentationMetrics reads argmax masks at the label size (SegmentationKDTrainer's predictions)"
            )
        num_classes = len(self.id2label)
        if predictions.numel() and not 0 <= int(predictions.min()) <= int(predictions.max()) < num_classes:
            raise ValueError(
                f"predicted class ids span [{int(predictions.min())}, {int(predictions.max())}] but id2label names "
                f"{num_classes} classes; pass the student's config.id2label (its num_labels outputs)"
            )
        kept = labels != self.ignore_index
        # torchmetrics' ignore_index leaves those pixels out of both counts; a prediction never equals it
        iou = MulticlassJaccardIndex(
            num_classes, average="none", ignore_index=self.ignore_index, zero_division=float("nan")
        )(predictions, labels)
        accuracy = MulticlassAccuracy(num_classes, average="micro", ignore_index=self.ignore_index)(
            predictions, labels
        )
        results = {
            "mean_iou": float(torch.nanmean(iou)) if bool(kept.any()) else float("nan"),
            "overall_accuracy": float(accuracy),
        }
        for index, name in sorted(self.id2label.items()):
            results[f"iou_{name}"] = float(iou[index])
        return results
