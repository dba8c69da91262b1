"""Top-k accuracy for ``Trainer.evaluate``, computed locally with numpy (no Hub fetch, unlike
``evaluate.load("accuracy")``, which downloads its script and fails offline)."""

from __future__ import annotations

import numpy as np
from transformers import EvalPrediction

from .losses.classification import IGNORE_INDEX


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of rows whose label has fewer than k logits strictly above it (ties go to the label)."""
    if logits.ndim != 2:
        raise ValueError(f"expected logits of shape (N, num_classes), got {logits.shape}")
    label_logit = logits[np.arange(len(labels)), labels]
    rank = (logits > label_logit[:, None]).sum(axis=1)
    return float((rank < k).mean())


def classification_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """``top1`` always, ``top5`` when there are more than 5 classes; rows labelled -100 are left out."""
    logits = prediction.predictions
    if isinstance(logits, tuple):
        logits = logits[0]
    labels = np.asarray(prediction.label_ids).reshape(-1)
    logits = np.asarray(logits)
    labelled = labels != IGNORE_INDEX  # unlabelled rows (-100) have nothing to score against
    if not labelled.any():
        raise ValueError(
            f"every evaluation label is {IGNORE_INDEX} (unlabelled); evaluate on a dataset with class labels"
        )
    logits, labels = logits[labelled], labels[labelled]
    metrics = {"top1": top_k_accuracy(logits, labels, 1)}
    if logits.shape[-1] > 5:
        metrics["top5"] = top_k_accuracy(logits, labels, 5)
    return metrics
