"""Detection batches: COCO annotations in, DETR-family labels out, and the checks that keep boxes honest.

The pipeline is transformers' ``run_object_detection.py``'s: rows in the Hub's detection layout
(``image``, ``image_id``, ``objects`` = {``bbox`` COCO ``[x, y, w, h]`` pixels, ``category``, ``area``})
go through the model's image processor with COCO-format annotations, which resizes, normalises and
turns boxes into the labels DETR-family losses read: one dict per image with ``class_labels`` and
``boxes`` (normalised ``[cx, cy, w, h]``), plus ``orig_size`` for evaluation.

Wrong boxes fail loudly, where they enter: pixel boxes must lie inside the image (``xyxy`` given where
``xywh`` is expected overflows the image for any box not at the origin), normalised boxes must be
``cx, cy, w, h`` in [0, 1] with the box inside the image (``xyxy`` read as ``cxcywh`` sticks out).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

# a box may overhang by rounding only
_TOLERANCE = 1e-3


def check_coco_boxes(bboxes: Any, width: int, height: int, where: str) -> None:
    """Raise unless every ``[x, y, w, h]`` pixel box has w, h > 0 and lies inside a ``width x height`` image."""
    boxes = np.asarray(bboxes, dtype=np.float64).reshape(-1, 4)
    if boxes.size == 0:
        return
    x, y, w, h = boxes.T
    slack = 1.0 + _TOLERANCE * max(width, height)
    bad = (
        (w <= 0) | (h <= 0) | (x < -slack) | (y < -slack) | (x + w > width + slack) | (y + h > height + slack)
    )
    if bad.any():
        box = boxes[bad.argmax()].tolist()
        raise ValueError(
            f"{where}: box {box} is not a COCO [x_min, y_min, width, height] box inside the {width}x{height} image "
            "(expected format: COCO xywh in pixels). Convert xyxy boxes with width = x_max - x_min, "
            "height = y_max - y_min"
        )


def check_categories(categories: Sequence[int], num_labels: int, where: str) -> None:
    """Raise unless every class id is in ``[0, num_labels)``."""
    values = np.asarray(categories, dtype=np.int64)
    bad = values[(values < 0) | (values >= num_labels)]
    if bad.size:
        raise ValueError(
            f"{where}: class id {int(bad[0])} is outside [0, {num_labels}) for a model with num_labels={num_labels}; "
            "fix the annotations or build the model with the dataset's classes (id2label)"
        )


def check_detection_labels(labels: Sequence[dict[str, torch.Tensor]], num_labels: int, where: str) -> None:
    """Raise unless each image's labels hold ``class_labels`` in range and normalised ``cxcywh`` ``boxes``."""
    if not isinstance(labels, (list, tuple)) or not all(isinstance(label, Mapping) for label in labels):
        raise ValueError(
            f"{where}: detection labels must be a list with one dict per image ({{'class_labels', 'boxes'}}), got "
            f"{type(labels).__name__}; collate batches with hf_dtokd.collate_detection"
        )
    for index, label in enumerate(labels):
        missing = [key for key in ("class_labels", "boxes") if key not in label]
        if missing:
            raise ValueError(f"{where}: image {index}'s labels lack {missing} (keys: {sorted(label)})")
        boxes = label["boxes"].detach().to("cpu", torch.float64).reshape(-1, 4)
        check_categories(label["class_labels"].cpu().numpy(), num_labels, f"{where}, image {index}")
        if boxes.numel() == 0:
            continue
        cx, cy, w, h = boxes.unbind(-1)
        low, high = -_TOLERANCE, 1 + _TOLERANCE
        bad = (
            (boxes < low).any(-1)
            | (boxes > high).any(-1)
            | (w <= 0)
            | (h <= 0)
            | (cx - w / 2 < low)
            | (cx + w / 2 > high)
            | (cy - h / 2 < low)
            | (cy + h / 2 > high)
        )
        if bad.any():
            box = boxes[int(bad.to(torch.uint8).argmax())].tolist()
            raise ValueError(
                f"{where}: image {index} has box {[round(v, 4) for v in box]}, not a normalised [cx, cy, w, h] box "
                "inside the image (expected format: cxcywh in [0, 1], as DETR-family image processors return). "
                "Boxes in pixels need dividing by the image size; xyxy boxes need converting "
                "(torchvision.ops.box_convert(boxes, 'xyxy', 'cxcywh'))"
            )


def coco_annotations(image_id: int, objects: dict[str, list]) -> dict[str, Any]:
    """One image's ``objects`` as the COCO detection annotation image processors take."""
    return {
        "image_id": image_id,
        "annotations": [
            {"image_id": image_id, "category_id": category, "bbox": list(bbox), "iscrowd": 0, "area": area}
            for category, bbox, area in zip(objects["category"], objects["bbox"], objects["area"])
        ],
    }


class DetectionTransform:
    """``dataset.with_transform(DetectionTransform(processor, num_labels))``: rows -> pixel_values, labels.

    Checks each image's boxes (COCO ``xywh`` pixels inside the image) and class ids before the processor.
    With ``teacher_processor`` (a teacher of another image size or normalisation) each row also gets
    ``teacher_pixel_values``, the same image prepared for the teacher (labels are normalised boxes, so
    they hold for both).
    """

    def __init__(self, processor: Any, num_labels: int, teacher_processor: Any | None = None) -> None:
        self.processor, self.num_labels, self.teacher_processor = processor, num_labels, teacher_processor

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        images, annotations = [], []
        for image, image_id, objects in zip(batch["image"], batch["image_id"], batch["objects"]):
            image = image.convert("RGB")
            where = f"image_id {image_id}"
            check_coco_boxes(objects["bbox"], image.width, image.height, where)
            check_categories(objects["category"], self.num_labels, where)
            images.append(image)
            annotations.append(coco_annotations(image_id, objects))
        encoded = self.processor(images=images, annotations=annotations, return_tensors="pt")
        result = {"pixel_values": encoded["pixel_values"], "labels": encoded["labels"]}
        if "pixel_mask" in encoded:
            result["pixel_mask"] = encoded["pixel_mask"]
        if self.teacher_processor is not None:
            result["teacher_pixel_values"] = self.teacher_processor(images=images, return_tensors="pt")[
                "pixel_values"
            ]
        return result


def collate_detection(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack pixels (and masks); keep labels as a list of per-image dicts, as DETR-family losses read them."""
    collated: dict[str, Any] = {
        "pixel_values": torch.stack([torch.as_tensor(x["pixel_values"]) for x in batch])
    }
    if "pixel_mask" in batch[0]:
        collated["pixel_mask"] = torch.stack([torch.as_tensor(x["pixel_mask"]) for x in batch])
    if "teacher_pixel_values" in batch[0]:
        collated["teacher_pixel_values"] = torch.stack(
            [torch.as_tensor(x["teacher_pixel_values"]) for x in batch]
        )
    collated["labels"] = [x["labels"] for x in batch]
    return collated
