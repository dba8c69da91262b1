"""DeiT-style augmentation from timm: RandAugment per image, Mixup / CutMix per training batch.

DeiT trains with RandAugment (``rand-m9-mstd0.5-inc1``), Mixup 0.8, CutMix 1.0 and label smoothing 0.1;
the distillation teacher sees the same mixed images as the student. Both pieces are timm's:

* ``augmented_images``: a dataset transform that applies ``rand_augment_transform`` to each PIL image, then
  the image processor. Translations are scaled to the image (timm's ``translate_const = 0.45 x size``, as
  in ``timm.data.create_transform``), so the recipe carries over from 224 px to small images.
* ``MixupCollator``: the base collator, then timm's ``Mixup`` on the batch, whose labels become soft targets
  ``(B, C)`` (the task loss takes them as they are; ``losses.task_cross_entropy``). It mixes *training*
  batches only: the DTOKD trainers evaluate with its ``base`` collator, so evaluation sees clean images and
  class indices. timm's Mixup pairs images within the batch: in an odd batch (an epoch's last) the last
  image is left unmixed, with its label-smoothed one-hot target.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from datasets import Dataset

#: DeiT's RandAugment policy: 2 ops of magnitude 9 (std 0.5), magnitude-increasing ops.
DEIT_RAND_AUGMENT = "rand-m9-mstd0.5-inc1"


def rand_augment(image_size: int, policy: str = DEIT_RAND_AUGMENT) -> Callable[[Any], Any]:
    """timm's RandAugment for ``image_size`` px images (translations scaled to the image, as timm does)."""
    from timm.data.auto_augment import rand_augment_transform

    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    hparams = {
        "translate_const": int(image_size * 0.45),
        "img_mean": (128, 128, 128),
        # timm's PosterizeIncreasing keeps 0 bits at magnitude 10, which Pillow >= 10 refuses (ValueError):
        # magnitudes are capped just below 10 (1 bit kept); every other op is unchanged to within 0.1 %
        "magnitude_max": 9.99,
    }
    return rand_augment_transform(policy, hparams)


def augmented_images(
    dataset: Dataset,
    processor: Any,
    policy: str | None = DEIT_RAND_AUGMENT,
    image_column: str = "image",
    augment_size: int | None = None,
) -> Dataset:
    """``dataset`` with ``pixel_values`` computed on access from RandAugment-ed images (``policy=None``: none).

    ``augment_size``: resize each image to this square size (bilinear) before augmenting, e.g. the
    student's input size for images smaller than it; None augments at the images' own size. The
    processor then makes the student's pixels."""
    from PIL import Image

    if image_column not in dataset.column_names:
        raise ValueError(f"no {image_column!r} column in the dataset (columns: {dataset.column_names})")
    if augment_size is None:
        sample = dataset.select(range(min(len(dataset), 8)))[image_column]
        size = min(min(image.size) for image in sample) if sample else 1
    else:
        size = augment_size
    augment = None if policy is None else rand_augment(size, policy)

    def transform(batch: dict[str, list]) -> dict[str, Any]:
        if image_column not in batch:  # a column read alone (e.g. the labels)
            return batch
        images = [image.convert("RGB") for image in batch[image_column]]
        if augment_size is not None:
            images = [image.resize((augment_size, augment_size), Image.BILINEAR) for image in images]
        if augment is not None:
            images = [augment(image) for image in images]
        out = {k: v for k, v in batch.items() if k != image_column}
        out["pixel_values"] = torch.as_tensor(processor(images=images, return_tensors="np")["pixel_values"])
        return out

    return dataset.with_transform(transform)


def deit_train_transform(
    dataset: Dataset,
    processor: Any,
    policy: str = DEIT_RAND_AUGMENT,
    random_erasing: float = 0.25,
    image_column: str = "image",
) -> Dataset:
    """``dataset`` with DeiT's whole training transform from timm (``timm.data.create_transform``): random
    resized crop (bicubic) to the processor's size, horizontal flip, RandAugment ``policy``, normalisation by the
    processor's mean / std, random erasing ``random_erasing``. For ImageNet-scale images; small images (digits)
    use ``augmented_images``, whose only geometric change is RandAugment's."""
    from timm.data import create_transform

    from hf_dtokd.trainer.teacher_inputs import PixelSpace

    if image_column not in dataset.column_names:
        raise ValueError(f"no {image_column!r} column in the dataset (columns: {dataset.column_names})")
    space = PixelSpace.from_processor(processor)
    if space.size is None:
        raise ValueError(f"{type(processor).__name__} names no image size; set its size (e.g. 224 x 224)")
    mean, std = (tuple(v) * (3 if len(v) == 1 else 1) for v in (space.mean, space.std))
    transform_one = create_transform(
        space.size,
        is_training=True,
        auto_augment=policy,
        interpolation="bicubic",
        re_prob=random_erasing,
        re_mode="pixel",
        re_count=1,
        mean=mean,
        std=std,
    )

    def transform(batch: dict[str, list]) -> dict[str, Any]:
        if image_column not in batch:
            return batch
        out = {k: v for k, v in batch.items() if k != image_column}
        out["pixel_values"] = torch.stack(
            [transform_one(image.convert("RGB")) for image in batch[image_column]]
        )
        return out

    return dataset.with_transform(transform)


class MixupCollator:
    """``base`` collation, then timm's ``Mixup`` / CutMix on the batch (training batches only; see module).

    Every batch gets soft targets ``(B, num_classes)``, label-smoothed; ``prob`` is the chance that a batch is
    mixed at all.

    Args:
        num_classes: the student's number of classes (the soft targets' width).
        base: the collator of the clean batch (default: transformers' ``DefaultDataCollator``).
        mixup_alpha, cutmix_alpha, label_smoothing, prob, switch_prob: timm's ``Mixup`` arguments (DeiT's
            values by default).
    """

    def __init__(
        self,
        num_classes: int,
        base: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        label_smoothing: float = 0.1,
        prob: float = 1.0,
        switch_prob: float = 0.5,
    ) -> None:
        from timm.data import Mixup
        from transformers import DefaultDataCollator

        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.base = base if base is not None else DefaultDataCollator()
        self.num_classes = num_classes
        self.mixup = Mixup(
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            prob=prob,
            switch_prob=switch_prob,
            label_smoothing=label_smoothing,
            num_classes=num_classes,
        )

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        from timm.data.mixup import mixup_target

        batch = self.base(features)
        labels = batch["labels"]
        if labels.is_floating_point() or (labels < 0).any():
            raise ValueError(
                "MixupCollator needs a class index for every example (no -100: an unlabelled image has no target "
                "to mix)"
            )
        pixels = batch["pixel_values"]
        even = len(labels) - len(labels) % 2  # timm pairs images: an odd batch's last image is left unmixed
        targets = mixup_target(labels, self.num_classes, lam=1.0, smoothing=self.mixup.label_smoothing)
        if even:
            mixed, mixed_targets = self.mixup(pixels[:even], labels[:even])
            pixels = torch.cat([mixed, pixels[even:]])
            targets = torch.cat([mixed_targets, targets[even:]])
        batch["pixel_values"], batch["labels"] = pixels, targets
        return batch
