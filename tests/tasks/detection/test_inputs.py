"""COCO -> DETR labels, and the box / class checks."""

from __future__ import annotations

import pytest
import torch
from transformers import DetrImageProcessor

from hf_dtokd import DetectionTransform, collate_detection
from hf_dtokd.data import SHAPE_CLASSES, generate_shapes
from hf_dtokd.tasks.detection.inputs import check_coco_boxes, check_detection_labels


def test_the_transform_turns_coco_pixel_boxes_into_normalised_cxcywh_labels() -> None:
    data = generate_shapes(4, image_size=40, seed=1)
    processor = DetrImageProcessor(size={"height": 32, "width": 32}, do_pad=False)
    rows = data.with_transform(DetectionTransform(processor, len(SHAPE_CLASSES)))
    batch = collate_detection([rows[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and len(batch["labels"]) == 4
    for label, objects in zip(batch["labels"], data["objects"]):
        expected = torch.tensor(
            [[(x + w / 2) / 40, (y + h / 2) / 40, w / 40, h / 40] for x, y, w, h in objects["bbox"]]
        )
        assert torch.allclose(label["boxes"], expected, atol=1e-5)
        assert label["class_labels"].tolist() == objects["category"]
        assert label["orig_size"].tolist() == [40, 40]


def test_xyxy_pixel_boxes_are_refused_naming_the_format() -> None:
    check_coco_boxes([[10, 10, 20, 20]], 64, 64, "ok")
    with pytest.raises(ValueError, match="COCO xywh"):
        check_coco_boxes([[30, 30, 60, 62]], 64, 64, "image 0")  # x_max given as width: leaves the image
    with pytest.raises(ValueError, match="COCO xywh"):
        check_coco_boxes([[5, 5, 0, 10]], 64, 64, "image 0")


def test_class_ids_outside_the_label_space_are_refused() -> None:
    data = generate_shapes(3, image_size=32, seed=2)
    processor = DetrImageProcessor(size={"height": 32, "width": 32}, do_pad=False)
    rows = data.with_transform(DetectionTransform(processor, num_labels=1))
    if max(max(o["category"]) for o in data["objects"]) == 0:
        pytest.skip("the generated rows happen to use class 0 only")
    with pytest.raises(ValueError, match=r"outside \[0, 1\)"):
        rows[:3]


def label(boxes: list[list[float]], classes: list[int]) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes).reshape(-1, 4),
        "class_labels": torch.tensor(classes, dtype=torch.long),
    }


def test_normalised_labels_must_be_cxcywh_inside_the_image() -> None:
    check_detection_labels(
        [label([[0.5, 0.5, 0.2, 0.2]], [1]), label([], [])], 3, "ok"
    )  # an image without targets
    with pytest.raises(ValueError, match="cxcywh"):
        check_detection_labels(
            [label([[0.1, 0.1, 0.5, 0.5]], [0])], 3, "batch"
        )  # xyxy read as cxcywh sticks out
    with pytest.raises(ValueError, match="cxcywh"):
        check_detection_labels([label([[12.0, 20.0, 8.0, 8.0]], [0])], 3, "batch")  # pixels, not normalised
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        check_detection_labels([label([[0.5, 0.5, 0.2, 0.2]], [3])], 3, "batch")
    with pytest.raises(ValueError, match="one dict per image"):
        check_detection_labels(torch.zeros(2, 4), 3, "batch")
    with pytest.raises(ValueError, match="lack"):
        check_detection_labels([{"boxes": torch.zeros(0, 4)}], 3, "batch")
