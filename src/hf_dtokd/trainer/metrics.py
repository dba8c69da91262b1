"""Classification metrics for ``Trainer.evaluate``.

The default, top-k accuracy, is computed locally with numpy (no Hub fetch, unlike
``evaluate.load("accuracy")``, which downloads its script and fails offline). ``evaluate_metrics`` turns
evaluate metric ids or local evaluate module paths into a ``compute_metrics`` (several are combined with
``evaluate.combine``), as transformers' example scripts do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from transformers import EvalPrediction

from hf_dtokd.losses.classification import IGNORE_INDEX


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of rows whose label has fewer than k logits strictly above it (ties go to the label)."""
    if logits.ndim != 2:
        raise ValueError(f"expected logits of shape (N, num_classes), got {logits.shape}")
    label_logit = logits[np.arange(len(labels)), labels]
    rank = (logits > label_logit[:, None]).sum(axis=1)
    return float((rank < k).mean())


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
        results = metric.compute(predictions=logits.argmax(-1), references=labels)
        return {name: float(value) for name, value in results.items()}

    return compute
