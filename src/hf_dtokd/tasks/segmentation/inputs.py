"""Segmentation batches: the Hub layout (``image``, ``annotation``) through the image processor, and label checks.

``SegmentationTransform`` is a ``datasets`` transform, as in transformers' ``run_semantic_segmentation.py``: the
image processor resizes and normalises the images and resizes the masks (nearest) to the same size, giving
``pixel_values`` ``(3, H, W)`` and ``labels`` ``(H, W)`` (int64 class ids, ``ignore_index`` where no loss reads).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class SegmentationTransform:
    """``{"image", "annotation"}`` rows -> ``{"pixel_values", "labels"}`` with ``processor`` (see module)."""

    def __init__(self, processor: Any, image_column: str = "image", label_column: str = "annotation") -> None:
        self.processor, self.image_column, self.label_column = processor, image_column, label_column

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        for column in (self.image_column, self.label_column):
            if column not in batch:
                raise ValueError(
                    f"the dataset has no {column!r} column (columns: {sorted(batch)}); a semantic-segmentation "
                    "dataset holds an image column and a mask column: name them with image_column_name / "
                    "label_column_name"
                )
        images = [image.convert("RGB") for image in batch[self.image_column]]
        masks = [np.asarray(mask) for mask in batch[self.label_column]]
        try:
            encoded = self.processor(images=images, segmentation_maps=masks, return_tensors="pt")
        except TypeError as error:
            raise ValueError(
                f"{type(self.processor).__name__} does not take segmentation_maps; use the segmentation model's own "
                "image processor (e.g. SegformerImageProcessor)"
            ) from error
        return {"pixel_values": encoded["pixel_values"], "labels": encoded["labels"].long()}


def check_segmentation_labels(labels: Any, num_labels: int, ignore_index: int, where: str) -> None:
    """Refuse masks that are not ``(B, H, W)`` class ids in ``[0, num_labels)`` or ``ignore_index``."""
    if not isinstance(labels, torch.Tensor) or labels.dim() != 3 or labels.is_floating_point():
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(
            f"{where} must be integer masks of shape (batch, height, width), got {shape}; prepare the dataset with "
            "hf_dtokd.SegmentationTransform (the mask column resized with the images)"
        )
    if labels.device.type != "cpu":  # checked without a device sync: CPU batches only
        return
    values = labels.unique()
    bad = values[((values < 0) | (values >= num_labels)) & (values != ignore_index)]
    if bad.numel():
        raise ValueError(
            f"{where} holds class id {int(bad[0])} outside [0, {num_labels}) for a student with num_labels="
            f"{num_labels}, and it is not the ignore index {ignore_index}; fix the masks (reduce_labels for "
            "datasets whose 0 is 'background' to skip) or build the student with the dataset's classes"
        )


def check_mask_size(labels: torch.Tensor, pixel_values: torch.Tensor) -> None:
    """The masks must have the images' height and width (the processor resizes both)."""
    if tuple(labels.shape[-2:]) != tuple(pixel_values.shape[-2:]) or labels.shape[0] != pixel_values.shape[0]:
        raise ValueError(
            f"masks of shape {tuple(labels.shape)} do not match the images {tuple(pixel_values.shape)}: each mask must "
            "be the size of its image. Resize them together with SegmentationTransform (the image processor resizes "
            "masks with the images)"
        )
