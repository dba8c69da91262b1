"""DeiT-style augmentation from timm: RandAugment per image, Mixup / CutMix per training batch.

DeiT trains with RandAugment (``rand-m9-mstd0.5-inc1``), Mixup 0.8, CutMix 1.0 and label smoothing 0.1;
the distillation teacher sees the same mixed images as the student. Both pieces are timm's:

* ``augmented_images``: a dataset transform that applies ``rand_augment_transform`` to each PIL image, then
  the image processor. Translations are scaled to the image (timm's ``translate_const = 0.45 x size``, as
  in ``timm.data.create_transform``), so the recipe carries over from 224 px to small images.
* ``MixupCollator``: the base collator, then timm's ``Mixup`` on the batch, whose labels become soft targets
  ``(B, C)`` (the task loss takes them as they are; ``losses.task_cross_entropy``). It mixes *training*
  batches only: the DTOKD trainers evaluate with its ``base`` collator, so evaluation sees clean images and
  class indices. timm's Mixup pairs images within the batch: the batch size must be even (set
  ``dataloader_drop_last=True`` when the dataset size is odd).
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
    return rand_augment_transform(policy, {"translate_const": int(image_size * 0.45), "img_mean": (128, 128, 128)})


def augmented_images(
    dataset: Dataset, processor: Any, policy: str | None = DEIT_RAND_AUGMENT, image_column: str = "image"
) -> Dataset:
    """``dataset`` with ``pixel_values`` computed on access from RandAugment-ed images (``policy=None``: none).

    The augmentation runs at the images' own size, before the processor resizes them."""
    if image_column not in dataset.column_names:
        raise ValueError(f"no {image_column!r} column in the dataset (columns: {dataset.column_names})")
    sizes = {min(image.size) for image in dataset.select(range(min(len(dataset), 8)))[image_column]}

    augment = None if policy is None else rand_augment(min(sizes), policy)

    def transform(batch: dict[str, list]) -> dict[str, Any]:
        images = [image.convert("RGB") for image in batch[image_column]]
        if augment is not None:
            images = [augment(image) for image in images]
        out = {k: v for k, v in batch.items() if k != image_column}
        out["pixel_values"] = torch.as_tensor(processor(images=images, return_tensors="np")["pixel_values"])
        return out

    return dataset.with_transform(transform)


class MixupCollator:
    """``base`` collation, then timm's ``Mixup`` / CutMix on the batch (training batches only; see module).

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
        batch = self.base(features)
        if len(features) % 2:
            raise ValueError(
                f"Mixup / CutMix pair the images of a batch, so the batch size must be even (got {len(features)}); "
                "use an even per_device_train_batch_size and dataloader_drop_last=True"
            )
        labels = batch["labels"]
        if labels.is_floating_point() or (labels < 0).any():
            raise ValueError(
                "MixupCollator needs a class index for every example (no -100: an unlabelled image has no target "
                "to mix)"
            )
        pixels, targets = self.mixup(batch["pixel_values"], labels)
        batch["pixel_values"], batch["labels"] = pixels, targets
        return batch
