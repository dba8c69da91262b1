"""mIoU, per-class IoU and pixel accuracy against a confusion matrix computed here with numpy, on generated masks."""

import math

import numpy as np
import pytest
from transformers import EvalPrediction

from hf_dtokd import SegmentationMetrics
from hf_dtokd.data import SEGMENTATION_CLASSES, generate_shape_masks

ID2LABEL = dict(enumerate(SEGMENTATION_CLASSES))


def confusion_reference(predictions, labels, num_classes, ignore_index):
    kept = labels != ignore_index
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels[kept], predictions[kept]), 1)
    tp = np.diag(matrix).astype(float)
    union = matrix.sum(0) + matrix.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    return iou, np.nanmean(iou), tp.sum() / kept.sum()


def generated_masks(n=12, seed=0):
    return np.stack(
        [np.asarray(row["annotation"], dtype=np.int64) for row in generate_shape_masks(n, 32, 3, seed)]
    )


def test_metrics_equal_a_numpy_confusion_matrix_on_generated_masks():
    labels = generated_masks()
    rng = np.random.default_rng(0)
    predictions = np.where(labels == 255, 0, labels)
    flip = rng.random(labels.shape) < 0.2  # a fifth of the pixels predicted at random
    predictions = np.where(flip, rng.integers(0, 4, labels.shape), predictions)
    results = SegmentationMetrics(ID2LABEL, 255)(EvalPrediction(predictions=predictions, label_ids=labels))
    iou, miou, accuracy = confusion_reference(predictions, labels, 4, 255)
    assert results["mean_iou"] == pytest.approx(miou, rel=1e-6)
    assert results["overall_accuracy"] == pytest.approx(accuracy, rel=1e-6)
    for index, name in ID2LABEL.items():
        assert results[f"iou_{name}"] == pytest.approx(iou[index], rel=1e-6)
    assert 0.3 < miou < 0.95  # the reference is not trivial: mistakes in every class


def test_a_class_absent_from_predictions_and_labels_has_no_iou_and_is_left_out_of_the_mean():
    labels = np.array([[[0, 0, 1, 255]]])
    predictions = np.array([[[0, 1, 1, 3]]])  # the ignored pixel's prediction is not counted
    results = SegmentationMetrics(ID2LABEL, 255)(EvalPrediction(predictions=predictions, label_ids=labels))
    assert math.isnan(results["iou_square"]) and math.isnan(results["iou_triangle"])
    assert results["iou_background"] == pytest.approx(0.5) and results["iou_circle"] == pytest.approx(0.5)
    assert results["mean_iou"] == pytest.approx(0.5)
    assert results["overall_accuracy"] == pytest.approx(2 / 3)


def test_predictions_of_another_shape_are_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        SegmentationMetrics(ID2LABEL)(
            EvalPrediction(predictions=np.zeros((1, 4, 4)), label_ids=np.zeros((1, 8, 8)))
        )


def test_predicted_ids_outside_the_label_space_are_refused_not_clamped():
    predictions = np.full((1, 4, 4), len(ID2LABEL))  # a model with one output more than id2label names
    with pytest.raises(ValueError, match="id2label names 4 classes"):
        SegmentationMetrics(ID2LABEL)(EvalPrediction(predictions=predictions, label_ids=np.zeros((1, 4, 4))))
