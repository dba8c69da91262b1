"""The embedded default data sets (no download)."""

from hf_dtokd.data.digits import labelled_indices, load_digits_splits, preprocess_images, transfer_set
from hf_dtokd.data.shapes import SHAPE_CLASSES, generate_shapes, load_shapes_splits

__all__ = [
    "SHAPE_CLASSES",
    "generate_shapes",
    "labelled_indices",
    "load_digits_splits",
    "load_shapes_splits",
    "preprocess_images",
    "transfer_set",
]
