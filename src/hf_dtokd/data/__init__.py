"""The embedded default data sets (no download)."""

from .digits import load_digits_splits, preprocess_images

__all__ = ["load_digits_splits", "preprocess_images"]
