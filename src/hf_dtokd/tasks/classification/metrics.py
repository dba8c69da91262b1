"""Classification metrics for ``Trainer.evaluate``.

The default, top-k accuracy, is torchmetrics' ``multiclass_accuracy`` (computed locally: no Hub fetch, unlike
``evaluate.load("accuracy")``, which downloads its script and fails offline), with one rule of ours on top: a
row whose logits are not all finite is never a hit (torch ranks NaN above every number, so a NaN student would
otherwise score the share of class 0, and a rank rule that lets ties go to the label would score 1.0). ``evaluate_metrics`` turns
evaluate metric ids or local evaluate module paths into a ``compute_metrics`` (several are combined with
``evaluate.combine``), as transformers' example scripts do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_accuracy
from transformers import EvalPrediction

from hf_dtokd.losses.classification import IGNORE_INDEX


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of rows whose label is among the k highest logits (torchmetrics' rule: ties are broken as
    ``torch.topk`` breaks them, so constant logits score the share of the class ``argmax`` picks); a row with a
    NaN or infinite logit counts as a miss."""
    logits = np.asarray(logits)
    labels = np.asarray(labels).reshape(-1)
    if logits.ndim != 2:
        raise ValueError(f"expected logits of shape (N, num_classes), got {logits.shape}")
    if len(labels) != len(logits):
        raise ValueError(f"{len(logits)} rows of logits but {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("no labelled row to score")
    finite = np.isfinite(logits).all(axis=1)
    if not finite.any():
        return 0.0
    num_classes = logits.shape[1]
    accuracy = multiclass_accuracy(
        torch.as_tensor(logits[finite], dtype=torch.float64),
        torch.as_tensor(labels[finite], dtype=torch.long),
        num_classes=num_classes,
        top_k=min(k, num_classes),
        average="micro",
    )
    hits = round(float(accuracy) * int(finite.sum()))  # torchmetrics returns float32: the count, exactly
    return hits / len(labels)


def labelled_logits(prediction: EvalPrediction) -> tuple[np.ndarray, np.ndarray]:
    """The logits and labels of the labelled rows (rows labelled -100 have nothing to score against)."""
    logits = prediction.predictions
    if isinstance(logits, tuple):
        logits = logits[0]
    labels = np.asarray(prediction.label_ids).reshape(-1)
    logits = np.asarray(logits)
    labelled = labels != IGNORE_INDEX
    if not labelled.any():
        raise ValueError(
            f"every evaluation label is {IGNORE_INDEX} (unlabelled); evaluate on a dataset with class labels"
        )
    return logits[labelled], labels[labelled]


def classification_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """``top1`` always, ``top5`` when there are more than 5 classes; rows labelled -100 are left out."""
    logits, labels = labelled_logits(prediction)
    metrics = {"top1": top_k_accuracy(logits, labels, 1)}
    if logits.shape[-1] > 5:
        metrics["top5"] = top_k_accuracy(logits, labels, 5)
    return metrics


def evaluate_metrics(metric_ids: Sequence[str]) -> Callable[[EvalPrediction], dict[str, float]]:
    """A ``compute_metrics`` from evaluate metrics: Hub ids (``"accuracy"``, fetched once and cached) or paths
    to local evaluate modules, combined with ``evaluate.combine``; computed on the argmax predictions of the
    labelled rows. Loaded here, so that a wrong id fails before training."""
    import evaluate

    if not metric_ids:
        raise ValueError("evaluate_metrics needs at least one metric id or module path")
    try:
        modules = [evaluate.load(metric_id) for metric_id in metric_ids]
    except Exception as error:  # evaluate raises FileNotFoundError / ConnectionError / ValueError by case
        raise ValueError(
            f"could not load the evaluate metric(s) {list(metric_ids)}: {error}. Pass evaluate metric ids "
            "(fetched from the Hub, so not offline) or paths to local evaluate modules"
        ) from error
    metric = modules[0] if len(modules) == 1 else evaluate.combine(modules)

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        logits, labels = labelled_logits(prediction)
        # a row with a non-finite logit predicts no class (-1), never a hit (numpy's argmax would pick a NaN)
        predictions = np.where(np.isfinite(logits).all(axis=-1), logits.argmax(-1), -1)
        results = metric.compute(predictions=predictions, references=labels)
        return {name: float(value) for name, value in results.items()}

    return compute
