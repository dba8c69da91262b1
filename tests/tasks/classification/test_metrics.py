import numpy as np
import pytest
from transformers import EvalPrediction

from hf_dtokd.tasks.classification.metrics import classification_metrics, top_k_accuracy


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


def test_top_k_equals_scikit_learns_on_random_logits():
    from sklearn.metrics import top_k_accuracy_score

    rng = np.random.default_rng(1)
    logits, labels = rng.standard_normal((300, 10)), rng.integers(0, 10, 300)
    for k in (1, 2, 5):
        expected = top_k_accuracy_score(labels, logits, k=k, labels=np.arange(10))
        assert top_k_accuracy(logits, labels, k) == pytest.approx(expected, abs=1e-12)


def test_constant_logits_score_the_share_of_the_class_argmax_picks():
    labels = np.array([0, 1, 2, 3, 0, 1, 1, 2])
    logits = np.zeros((len(labels), 4))
    assert np.all(logits.argmax(-1) == 0)
    assert top_k_accuracy(logits, labels, 1) == pytest.approx(np.mean(labels == 0))  # 0.25, not 1.0
    assert classification_metrics(EvalPrediction(predictions=logits, label_ids=labels))["top1"] == 0.25


def test_nonfinite_logits_never_count_as_correct():
    labels = np.arange(10) % 7
    for bad in (np.nan, np.inf, -np.inf):
        assert top_k_accuracy(np.full((10, 7), bad), labels, 1) == 0.0
        assert top_k_accuracy(np.full((10, 7), bad), labels, 5) == 0.0
    logits = np.eye(7)[labels] * 5.0  # every row right ...
    logits[:4, 3] = np.nan  # ... but four rows hold a NaN
    assert top_k_accuracy(logits, labels, 1) == pytest.approx(0.6)
    metrics = classification_metrics(EvalPrediction(predictions=np.full((10, 7), np.nan), label_ids=labels))
    assert metrics == {"top1": 0.0, "top5": 0.0}
