"""The embedded default data sets (no download) and DeiT-style augmentation."""

from hf_dtokd.data.augmentation import MixupCollator, augmented_images, deit_train_transform, rand_augment
from hf_dtokd.data.digits import labelled_indices, load_digits_splits, preprocess_images, transfer_set
from hf_dtokd.data.shapes import (
    MASK_IGNORE_INDEX,
    SEGMENTATION_CLASSES,
    SHAPE_CLASSES,
    generate_shape_masks,
    generate_shapes,
    load_shape_mask_splits,
    load_shapes_splits,
)

__all__ = [
    "MixupCollator",
    "augmented_images",
    "deit_train_transform",
    "rand_augment",
    "MASK_IGNORE_INDEX",
    "SEGMENTATION_CLASSES",
    "SHAPE_CLASSES",
    "generate_shape_masks",
    "generate_shapes",
    "load_shape_mask_splits",
    "labelled_indices",
    "load_digits_splits",
    "load_shapes_splits",
    "preprocess_images",
    "transfer_set",
]
