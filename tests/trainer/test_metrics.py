import numpy as np
import pytest
from transformers import EvalPrediction

from hf_dtokd.trainer.metrics import classification_metrics, top_k_accuracy


def test_top_k_against_argsort():
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((200, 10)), rng.integers(0, 10, 200)
    for k in (1, 3, 5):
        expected = np.mean([label in np.argsort(-row)[:k] for row, label in zip(logits, labels)])
        assert top_k_accuracy(logits, labels, k) == pytest.approx(expected)


def test_top5_only_with_more_than_five_classes():
    few = classification_metrics(EvalPrediction(predictions=np.eye(4), label_ids=np.arange(4)))
    assert few == {"top1": 1.0}
    many = classification_metrics(EvalPrediction(predictions=np.eye(10), label_ids=np.roll(np.arange(10), 1)))
    assert many["top1"] == 0.0 and "top5" in many


def test_unlabelled_rows_are_left_out_and_an_all_unlabelled_set_is_refused():
    logits = np.eye(4)
    metrics = classification_metrics(
        EvalPrediction(predictions=logits, label_ids=np.array([0, -100, 1, -100]))
    )
    assert metrics == {"top1": 0.5}  # row 0 right, row 2 (label 1, argmax 2) wrong
    with pytest.raises(ValueError, match="unlabelled"):
        classification_metrics(EvalPrediction(predictions=logits, label_ids=np.full(4, -100)))
