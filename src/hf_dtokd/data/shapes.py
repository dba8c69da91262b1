"""Generated detection and segmentation data: coloured shapes on textured backgrounds, in the Hub's layouts.

Each image (RGB, ``image_size`` square) holds 1 to ``max_objects`` shapes of ``SHAPE_CLASSES``
(circle, square, triangle), each a random colour and size, on a background of smooth colour noise
and stripes, so that the class is the shape, not the colour. Rows follow the layout of the Hub's
detection datasets (cppe-5, the one transformers' ``run_object_detection.py`` reads):
``image``, ``image_id``, ``width``, ``height`` and ``objects`` = {``id``, ``area``, ``bbox`` (COCO
``[x_min, y_min, width, height]`` in pixels), ``category``}. ``generate_shape_masks`` gives the same scenes
in the semantic-segmentation layout (``image``, ``annotation``). Generation is a pure function of the seed.
"""

from __future__ import annotations

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Sequence, Value
from PIL import Image as PILImage
from PIL import ImageDraw

SHAPE_CLASSES = ("circle", "square", "triangle")
#: the segmentation masks' classes: the background, then the shapes
SEGMENTATION_CLASSES = ("background", *SHAPE_CLASSES)
#: the masks' label of pixels no loss or metric reads (each shape's boundary), as in ADE20K / SegFormer
MASK_IGNORE_INDEX = 255


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour noise (bilinearly upsampled 4x4 grid) plus faint stripes of random angle."""
    grid = rng.uniform(40, 200, size=(4, 4, 3)).astype(np.float32)
    image = np.asarray(
        PILImage.fromarray(grid.astype(np.uint8)).resize((size, size), PILImage.BILINEAR), np.float32
    )
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 12)
    stripes = 18.0 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    return np.clip(image + stripes[..., None] + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


def _draw(
    draw: ImageDraw.ImageDraw,
    shape: str,
    box: tuple[int, int, int, int],
    colour: tuple[int, ...] | int,
    outline: int | None = None,
) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=colour, outline=outline)
    elif shape == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=colour, outline=outline)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=colour, outline=outline)


def _overlap(box: tuple[int, int, int, int], others: list[tuple[int, int, int, int]]) -> bool:
    """True when ``box`` covers more than a quarter of a placed box (or the reverse): both stay visible."""
    for other in others:
        w = min(box[2], other[2]) - max(box[0], other[0])
        h = min(box[3], other[3]) - max(box[1], other[1])
        if w > 0 and h > 0:
            smaller = min(
                (box[2] - box[0]) * (box[3] - box[1]), (other[2] - other[0]) * (other[3] - other[1])
            )
            if w * h > 0.25 * smaller:
                return True
    return False


def _scenes(num_images: int, image_size: int, max_objects: int, seed: int):
    """Per image: the RGB image, its placed ``(box, category)`` list and its class mask (see the module)."""
    if num_images < 1 or image_size < 16 or max_objects < 1:
        raise ValueError(
            f"generating shapes needs num_images >= 1, image_size >= 16 and max_objects >= 1 (got {num_images}, "
            f"{image_size}, {max_objects})"
        )
    rng = np.random.default_rng(seed)
    for _ in range(num_images):
        image = PILImage.fromarray(_background(rng, image_size))
        mask = PILImage.new("L", (image_size, image_size), 0)
        draw, draw_mask = ImageDraw.Draw(image), ImageDraw.Draw(mask)
        placed: list[tuple[tuple[int, int, int, int], int]] = []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            for _attempt in range(20):
                side = int(rng.integers(image_size // 6, image_size // 2.5))
                x0, y0 = (int(v) for v in rng.integers(0, image_size - side, size=2))
                box = (x0, y0, x0 + side, y0 + side)
                if not _overlap(box, [b for b, _ in placed]):
                    break
            else:
                continue
            category = int(rng.integers(len(SHAPE_CLASSES)))
            _draw(draw, SHAPE_CLASSES[category], box, tuple(int(c) for c in rng.integers(0, 256, size=3)))
            # the mask: class + 1 inside (0 is the background), the one-pixel boundary ignored (VOC's convention)
            _draw(draw_mask, SHAPE_CLASSES[category], box, category + 1, outline=MASK_IGNORE_INDEX)
            placed.append((box, category))
        yield image, placed, mask


def generate_shapes(
    num_images: int, image_size: int = 64, max_objects: int = 3, seed: int = 0, first_id: int = 0
) -> Dataset:
    """``num_images`` generated detection rows (see the module docstring); boxes are COCO ``xywh`` in pixels."""
    rows: dict[str, list] = {"image": [], "image_id": [], "width": [], "height": [], "objects": []}
    object_id = 0
    for index, (image, placed, _) in enumerate(_scenes(num_images, image_size, max_objects, seed)):
        objects: dict[str, list] = {"id": [], "area": [], "bbox": [], "category": []}
        for (x0, y0, x1, _), category in placed:
            side = x1 - x0
            objects["id"].append(object_id)
            objects["area"].append(float(side * side))
            objects["bbox"].append([float(x0), float(y0), float(side), float(side)])
            objects["category"].append(category)
            object_id += 1
        rows["image"].append(image)
        rows["image_id"].append(first_id + index)
        rows["width"].append(image_size)
        rows["height"].append(image_size)
        rows["objects"].append(objects)
    features = Features(
        {
            "image": Image(),
            "image_id": Value("int64"),
            "width": Value("int32"),
            "height": Value("int32"),
            "objects": {
                "id": Sequence(Value("int64")),
                "area": Sequence(Value("float32")),
                "bbox": Sequence(Sequence(Value("float32"), length=4)),
                "category": Sequence(ClassLabel(names=list(SHAPE_CLASSES))),
            },
        }
    )
    return Dataset.from_dict(rows, features=features)


def generate_shape_masks(
    num_images: int, image_size: int = 64, max_objects: int = 3, seed: int = 0
) -> Dataset:
    """``num_images`` generated semantic-segmentation rows in the Hub's layout (``scene_parse_150``, the one
    transformers' ``run_semantic_segmentation.py`` reads): ``image`` (RGB) and ``annotation`` (a mode-L mask of
    ``SEGMENTATION_CLASSES`` ids, 255 on each shape's one-pixel boundary). The same scenes as
    ``generate_shapes`` with the same arguments."""
    rows: dict[str, list] = {"image": [], "annotation": []}
    for image, _, mask in _scenes(num_images, image_size, max_objects, seed):
        rows["image"].append(image)
        rows["annotation"].append(mask)
    return Dataset.from_dict(rows, features=Features({"image": Image(), "annotation": Image()}))


def load_shapes_splits(
    train_size: int = 800,
    validation_size: int = 200,
    image_size: int = 64,
    max_objects: int = 3,
    seed: int = 0,
) -> DatasetDict:
    """``{"train", "validation"}``: two independently generated sets (different seeds and image ids)."""
    return DatasetDict(
        {
            "train": generate_shapes(train_size, image_size, max_objects, seed),
            "validation": generate_shapes(
                validation_size, image_size, max_objects, seed + 10_000, train_size
            ),
        }
    )


def load_shape_mask_splits(
    train_size: int = 800,
    validation_size: int = 200,
    image_size: int = 64,
    max_objects: int = 3,
    seed: int = 0,
) -> DatasetDict:
    """``{"train", "validation"}`` segmentation sets, generated independently (different seeds)."""
    return DatasetDict(
        {
            "train": generate_shape_masks(train_size, image_size, max_objects, seed),
            "validation": generate_shape_masks(validation_size, image_size, max_objects, seed + 10_000),
        }
    )
