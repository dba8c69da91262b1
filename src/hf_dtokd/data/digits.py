"""scikit-learn's digits (1,797 real 8x8 grey-scale scans, 10 classes) as a datasets.DatasetDict.

The images ship inside scikit-learn, so this is a real image-classification task that needs no
download: ``Image`` and ``ClassLabel`` features, a fixed stratified split of 1,437 train and 360
test images, and the usual ``processor(images)`` preprocessing, done once with ``Dataset.map``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from datasets import Array3D, ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage

from hf_dtokd.losses.classification import IGNORE_INDEX

TEST_SIZE = 360


def load_digits_splits(seed: int = 0) -> DatasetDict:
    """``{"train": 1437 rows, "test": 360 rows}`` with columns ``image`` (PIL, mode L) and ``label``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images / 16.0 * 255.0).astype(np.uint8)
    features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    dataset = Dataset.from_dict(
        {"image": [PILImage.fromarray(p, mode="L") for p in pixels], "label": digits.target.tolist()},
        features=features,
    )
    return dataset.train_test_split(test_size=TEST_SIZE, seed=seed, stratify_by_column="label")


def preprocess_images(dataset: Dataset, processor: Any, column: str = "pixel_values") -> Dataset:
    """Apply an image processor once (RGB conversion, resize, normalise) and keep tensors as a column."""

    def transform(batch: dict[str, list]) -> dict[str, Any]:
        images = [image.convert("RGB") for image in batch["image"]]
        return {column: processor(images=images, return_tensors="np")["pixel_values"]}

    channels, height, width = transform(dataset[:1])[column].shape[1:]
    features = dataset.features.copy()
    del features["image"]
    # a fixed-shape Array3D column is read ~30x faster than nested lists by the Trainer's DataLoader
    features[column] = Array3D((channels, height, width), "float32")
    processed = dataset.map(
        transform, batched=True, batch_size=256, remove_columns=["image"], features=features
    )
    return processed.with_format("torch")


def labelled_indices(dataset: Dataset, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` row indices of every class, drawn with ``seed``, sorted."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(dataset["label"])
    counts = {int(c): int((labels == c).sum()) for c in np.unique(labels)}
    if min(counts.values()) < per_class:
        raise ValueError(f"labelled_per_class={per_class} but a class has only {min(counts.values())} images")
    chosen = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def transfer_set(dataset: Dataset, per_class: int, seed: int, unlabelled_pool: bool = True) -> Dataset:
    """A few labelled images per class, and (``unlabelled_pool``) every other image with label -100.

    The distillation regime where a teacher labels a transfer set: the student sees ``per_class`` labelled
    images per class and distils on the rest, which carry no label (distillation loss only). Without the
    pool, the labelled subset alone (what a student without a teacher can use)."""
    chosen = labelled_indices(dataset, per_class, seed)
    if not unlabelled_pool:
        return dataset.select(chosen)
    keep = np.zeros(len(dataset), dtype=bool)
    keep[chosen] = True
    masked = np.where(keep, np.asarray(dataset["label"]), IGNORE_INDEX)
    pool = dataset.remove_columns("label").add_column("label", masked.tolist())
    return pool.cast_column("label", Value("int64")).with_format("torch")
