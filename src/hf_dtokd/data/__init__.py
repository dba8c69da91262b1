"""The embedded default data sets (no download) and DeiT-style augmentation."""

from hf_dtokd.data.augmentation import MixupCollator, augmented_images, deit_train_transform, rand_augment
from hf_dtokd.data.digits import labelled_indices, load_digits_splits, preprocess_images, transfer_set
from hf_dtokd.data.shapes import SHAPE_CLASSES, generate_shapes, load_shapes_splits

__all__ = [
    "MixupCollator",
    "augmented_images",
    "deit_train_transform",
    "rand_augment",
    "SHAPE_CLASSES",
    "generate_shapes",
    "labelled_indices",
    "load_digits_splits",
    "load_shapes_splits",
    "preprocess_images",
    "transfer_set",
]
