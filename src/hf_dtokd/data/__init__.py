"""The embedded default data sets (no download)."""

from .digits import labelled_indices, load_digits_splits, preprocess_images, transfer_set
from .shapes import SHAPE_CLASSES, generate_shapes, load_shapes_splits

__all__ = [
    "SHAPE_CLASSES",
    "generate_shapes",
    "labelled_indices",
    "load_digits_splits",
    "load_shapes_splits",
    "preprocess_images",
    "transfer_set",
]
