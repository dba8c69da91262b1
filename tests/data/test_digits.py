"""The embedded digits: real, fixed splits; the transfer set (a few labelled images per class, the rest -100)."""

import numpy as np
import pytest

from hf_dtokd.data import labelled_indices, load_digits_splits, transfer_set
from hf_dtokd.losses import IGNORE_INDEX


def test_digits_splits_are_real_and_fixed():
    splits = load_digits_splits()
    assert (len(splits["train"]), len(splits["test"])) == (1437, 360)
    assert splits["train"].features["label"].names == [str(i) for i in range(10)]
    assert splits["train"][0]["image"].size == (8, 8)
    assert splits["test"]["label"][:20] == load_digits_splits()["test"]["label"][:20]


def test_the_transfer_set_keeps_per_class_labels_and_marks_the_rest_unlabelled():
    train = load_digits_splits()["train"]
    labels = np.asarray(train["label"])
    pool = transfer_set(train, per_class=3, seed=4)
    masked = np.asarray(pool["label"])
    kept = np.flatnonzero(masked != IGNORE_INDEX)
    assert len(pool) == len(train) and len(kept) == 30
    assert np.array_equal(masked[kept], labels[kept])  # the kept labels are the true ones
    assert np.bincount(masked[kept], minlength=10).tolist() == [3] * 10
    assert np.array_equal(kept, labelled_indices(train, 3, seed=4))  # the same draw for the same seed
    assert not np.array_equal(kept, labelled_indices(train, 3, seed=5))
    subset = transfer_set(train, per_class=3, seed=4, unlabelled_pool=False)
    assert len(subset) == 30 and sorted(set(subset["label"])) == list(range(10))


def test_asking_for_more_labels_than_a_class_has_is_named():
    train = load_digits_splits()["train"]
    with pytest.raises(ValueError, match="labelled_per_class=500 but a class has only"):
        transfer_set(train, per_class=500, seed=0)
