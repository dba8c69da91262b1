"""DetectionMetrics against pycocotools' COCOeval: every summary value and every per-class AP, to 1e-6.

The predictions are raw DETR-family outputs (logits, normalised boxes); both sides see the same scored
boxes from the detector's own image processor (DETR: softmax with a no-object class; RT-DETR: sigmoid
top-k). The reference then runs COCO's own evaluation on them.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from transformers import DetrImageProcessor, EvalPrediction, RTDetrImageProcessor
from transformers.utils import ModelOutput

from hf_dtokd import DetectionMetrics

CLASSES = 4  # class 3 is predicted but never in the ground truth
HEIGHT, WIDTH = 480, 640
QUERIES = 12
#: pixel sides of COCO's three area ranges (area < 32^2, < 96^2, above)
SIDES = {"small": (8, 28), "medium": (40, 90), "large": (110, 300)}


def generate(images: int = 32, seed: int = 0, no_object: bool = True):
    """Per-batch (logits, boxes) and per-image targets: jittered true boxes with their class, plus clutter."""
    rng = np.random.default_rng(seed)
    predictions, targets = [], []
    for start in range(0, images, 4):
        batch_logits, batch_boxes, batch_targets = [], [], []
        for _ in range(min(4, images - start)):
            count = int(rng.integers(1, 5))
            sides = [rng.uniform(*SIDES[size], size=2) for size in rng.choice(list(SIDES), count)]
            wh = np.array([[w, h] for w, h in sides])
            centre = rng.uniform(wh / 2, np.array([WIDTH, HEIGHT]) - wh / 2)
            boxes = np.concatenate([centre, wh], 1) / np.array([WIDTH, HEIGHT, WIDTH, HEIGHT])
            labels = rng.integers(0, CLASSES - 1, count)
            logits = rng.normal(0.0, 1.0, (QUERIES, CLASSES + int(no_object)))
            pred = rng.uniform(0.05, 0.5, (QUERIES, 4))
            pred[:, :2] = rng.uniform(0.2, 0.8, (QUERIES, 2))
            for q in range(count):  # a detection near each true box, usually with the right class
                pred[q] = boxes[q] + rng.normal(0.0, 0.02, 4) * boxes[q, [2, 3, 2, 3]]
                logits[q, labels[q] if rng.random() < 0.8 else CLASSES - 1] += rng.uniform(1.0, 4.0)
            logits[count, CLASSES - 1] += 3.0  # the class without ground truth is detected
            batch_logits.append(logits)
            batch_boxes.append(np.clip(pred, 1e-3, 1.0))
            batch_targets.append(
                {"boxes": boxes, "class_labels": labels, "orig_size": np.array([HEIGHT, WIDTH])}
            )
        predictions.append(
            (np.stack(batch_logits).astype(np.float32), np.stack(batch_boxes).astype(np.float32))
        )
        targets.append(batch_targets)
    return predictions, targets


def coco_reference(processor, predictions, targets):
    """COCOeval's 12 stats and per-class APs of the processor's scored boxes."""
    images, annotations, detections = [], [], []
    image_id = 0
    for (logits, boxes), batch_targets in zip(predictions, targets):
        outputs = ModelOutput(logits=torch.as_tensor(logits), pred_boxes=torch.as_tensor(boxes))
        sizes = torch.tensor(np.stack([t["orig_size"] for t in batch_targets]))
        results = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes)
        for result, target in zip(results, batch_targets):
            images.append({"id": image_id, "height": HEIGHT, "width": WIDTH})
            for (cx, cy, w, h), label in zip(target["boxes"], target["class_labels"]):
                w, h = w * WIDTH, h * HEIGHT
                box = [cx * WIDTH - w / 2, cy * HEIGHT - h / 2, w, h]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": int(label),
                        "bbox": box,
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
            for (x0, y0, x1, y1), score, label in zip(
                result["boxes"].tolist(), result["scores"].tolist(), result["labels"].tolist()
            ):
                detections.append(
                    {
                        "image_id": image_id,
                        "category_id": int(label),
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "score": score,
                    }
                )
            image_id += 1
    ground_truth = COCO()
    ground_truth.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c} for c in range(CLASSES)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth.createIndex()
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(detections), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    per_class = {}
    for k, category in enumerate(evaluation.params.catIds):
        precision = evaluation.eval["precision"][:, :, k, 0, -1]
        per_class[category] = float(precision[precision > -1].mean()) if (precision > -1).any() else -1.0
    return evaluation.stats, per_class


@pytest.mark.parametrize(
    ("processor", "no_object"),
    [(DetrImageProcessor(), True), (RTDetrImageProcessor(), False)],
    ids=["detr", "rt_detr"],
)
def test_every_summary_value_and_per_class_ap_equal_cocoeval(processor, no_object):
    predictions, targets = generate(images=32, no_object=no_object)
    stats, per_class = coco_reference(processor, predictions, targets)
    names = {c: f"class{c}" for c in range(CLASSES)}
    metrics = DetectionMetrics(processor, id2label=names)(
        EvalPrediction(predictions=predictions, label_ids=targets)
    )
    summary = (
        "map",
        "map_50",
        "map_75",
        "map_small",
        "map_medium",
        "map_large",
        "mar_1",
        "mar_10",
        "mar_100",
    )
    for index, name in enumerate(summary):
        assert metrics[name] == pytest.approx(stats[index], abs=1e-6), name
    assert 0.05 < metrics["map"] < 0.95 and min(stats[3:6]) > 0  # every size range is populated and scored
    for category, ap in per_class.items():
        assert metrics[f"map_class{category}"] == pytest.approx(ap, abs=1e-6), category
    assert per_class[CLASSES - 1] == -1.0  # detected, never in the ground truth: COCO leaves it out
    assert any(value != round(value, 4) for value in metrics.values())  # not rounded
