"""The generated detection data: the Hub's detection layout, reproducible, boxes where the shapes are."""

from __future__ import annotations

import numpy as np
import pytest

from hf_dtokd.data import SHAPE_CLASSES, generate_shapes, load_shapes_splits
from hf_dtokd.tasks.detection.inputs import check_coco_boxes


def test_shapes_follow_the_hub_detection_layout_and_are_reproducible() -> None:
    data = generate_shapes(12, image_size=48, max_objects=3, seed=5)
    assert data.column_names == ["image", "image_id", "width", "height", "objects"]
    assert data.features["objects"]["category"].feature.names == list(SHAPE_CLASSES)
    again = generate_shapes(12, image_size=48, max_objects=3, seed=5)
    other = generate_shapes(12, image_size=48, max_objects=3, seed=6)
    assert again[:]["objects"] == data[:]["objects"]
    assert np.array_equal(np.asarray(again[0]["image"]), np.asarray(data[0]["image"]))
    assert other[:]["objects"] != data[:]["objects"]
    counts = [len(objects["bbox"]) for objects in data["objects"]]
    assert min(counts) >= 1 and max(counts) <= 3
    for row in data:
        check_coco_boxes(row["objects"]["bbox"], row["width"], row["height"], "generated")
        for (x, y, w, h), area in zip(row["objects"]["bbox"], row["objects"]["area"]):
            assert area == pytest.approx(w * h)
            # a solid shape is drawn at the box's centre (the background is noisy, never flat over 3x3 pixels)
            image = np.asarray(row["image"], dtype=np.float32)
            cy, cx = int(y + h / 2), int(x + w / 2)
            assert image[cy - 1 : cy + 2, cx - 1 : cx + 2].std(axis=(0, 1)).max() == 0.0
        background = np.asarray(row["image"], dtype=np.float32)[:3, :3]
        covered = any(x < 3 and y < 3 for x, y, _, _ in row["objects"]["bbox"])
        assert covered or background.std(axis=(0, 1)).max() > 0.0


def test_splits_have_distinct_image_ids() -> None:
    splits = load_shapes_splits(train_size=6, validation_size=4, image_size=32)
    assert set(splits["train"]["image_id"]).isdisjoint(splits["validation"]["image_id"])


def test_masks_follow_the_hub_segmentation_layout_and_match_the_detection_scenes():
    import numpy as np

    from hf_dtokd.data import MASK_IGNORE_INDEX, SEGMENTATION_CLASSES, generate_shape_masks

    masks = generate_shape_masks(6, image_size=48, max_objects=3, seed=4)
    boxes = generate_shapes(6, image_size=48, max_objects=3, seed=4)
    assert masks.column_names == ["image", "annotation"] and SEGMENTATION_CLASSES[0] == "background"
    for mask_row, box_row in zip(masks, boxes):
        image, mask = np.asarray(mask_row["image"]), np.asarray(mask_row["annotation"])
        assert image.shape == (48, 48, 3) and mask.shape == (48, 48) and mask.dtype == np.uint8
        assert np.array_equal(image, np.asarray(box_row["image"]))  # the same scene as the detection rows
        assert set(np.unique(mask)) <= {0, 1, 2, 3, MASK_IGNORE_INDEX}
        for (x, y, w, h), category in zip(box_row["objects"]["bbox"], box_row["objects"]["category"]):
            inside = mask[int(y) + 2 : int(y + h) - 2, int(x + w / 2)]  # a column through the shape's middle
            assert (inside == category + 1).any(), "the shape's class fills its box"
        ignored = mask == MASK_IGNORE_INDEX
        assert 0 < ignored.mean() < 0.2  # each shape's one-pixel boundary, no more
