"""Unlabelled images for detection KD: the teacher's predictions where the student has no labels.

A teacher's advantage is often its data: it was trained on many more images than the student has labels for.
Distilling on the student's labelled images alone hands over only what the teacher says about those images;
with ``unlabelled_dataset`` every training micro-batch also draws ``unlabelled_batch_size`` images (per
process) from a set of images without labels (the teacher's own training images, or any images of the
domain). The student runs a second forward on them, without labels; the KD terms are means over the matched
queries of both forwards' images, and the task loss reads the labelled images only. Balancing is unchanged:
the two objectives are still ``(KD, task)``, measured on the same micro-batch.

Hand-written rather than a second ``DataLoader``: the draw is a pure function of ``(seed, micro-batch index,
process)`` (a seeded permutation per pass over the images, each process taking its own slice of every
micro-batch), so a run resumed from a checkpoint draws exactly what the uninterrupted run would have drawn,
without a sampler state to save, and within a pass over the images no image is drawn twice, whichever process
draws it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

#: batch keys of the unlabelled images: ``unlabelled_pixel_values`` (and ``unlabelled_pixel_mask``)
UNLABELLED_PREFIX = "unlabelled_"
#: the columns read from an unlabelled image (any other column, labels included, is not read)
UNLABELLED_COLUMNS = ("pixel_values", "pixel_mask")


def split_unlabelled(inputs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(labelled inputs, unlabelled inputs)`` of a micro-batch; the second without the prefix (empty when the
    batch has no unlabelled images)."""
    labelled = {k: v for k, v in inputs.items() if not k.startswith(UNLABELLED_PREFIX)}
    unlabelled = {
        k[len(UNLABELLED_PREFIX) :]: v for k, v in inputs.items() if k.startswith(UNLABELLED_PREFIX)
    }
    return labelled, unlabelled


class UnlabelledImages:
    """Draws the unlabelled images of each training micro-batch from ``dataset`` (see the module docstring).

    Args:
        dataset: rows with ``pixel_values`` (a ``(3, H, W)`` tensor, prepared like the labelled images) and
            optionally ``pixel_mask``; e.g. ``images.with_transform(UnlabelledImageTransform(processor))``.
        batch_size: images per micro-batch and process.
        seed: the permutations' seed (the Trainer's ``data_seed`` or ``seed``).
        process_index, num_processes: this process's slice of each micro-batch's draw.
    """

    def __init__(
        self, dataset: Any, batch_size: int, seed: int, process_index: int = 0, num_processes: int = 1
    ) -> None:
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TypeError(
                f"unlabelled_dataset must be a map-style dataset (len() and [i]), got {type(dataset).__name__}"
            )
        if len(dataset) == 0:
            raise ValueError("unlabelled_dataset is empty; pass images or leave unlabelled_dataset=None")
        if batch_size < 1:
            raise ValueError(f"unlabelled_batch_size must be >= 1, got {batch_size}")
        row = dataset[0]
        if not isinstance(row, dict) or "pixel_values" not in row:
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(
                f"unlabelled_dataset rows need 'pixel_values' (got {keys}); prepare the images with the student's "
                "image processor, e.g. dataset.with_transform(hf_dtokd.UnlabelledImageTransform(processor))"
            )
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.process_index, self.num_processes = process_index, num_processes
        self._permutations: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def indices(self, micro_batch: int) -> list[int]:
        """The dataset indices this process reads for training micro-batch ``micro_batch`` (counted from 0)."""
        start = (micro_batch * self.num_processes + self.process_index) * self.batch_size
        return [self._index(position) for position in range(start, start + self.batch_size)]

    def batch(self, micro_batch: int) -> dict[str, torch.Tensor]:
        """The micro-batch's images, stacked: ``{"pixel_values": (B, 3, H, W)[, "pixel_mask": (B, H, W)]}``."""
        return collate_unlabelled([self.dataset[index] for index in self.indices(micro_batch)])

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.dataset))
        permutation = self._permutations.get(epoch)
        if permutation is None:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            permutation = torch.randperm(len(self.dataset), generator=generator).tolist()
            # a micro-batch spans at most two passes: keep the last two
            self._permutations = {e: p for e, p in self._permutations.items() if e >= epoch - 1}
            self._permutations[epoch] = permutation
        return permutation[offset]


def stacked_images(labelled: dict[str, Any], unlabelled: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """Both sets' images as one batch (labelled first) for a single teacher forward, or None when they do not
    stack: another image size, or a pixel mask on one side only."""
    if any((key in labelled) != (key in unlabelled) for key in UNLABELLED_COLUMNS):
        return None
    if any(labelled[key].shape[1:] != unlabelled[key].shape[1:] for key in unlabelled):
        return None
    return {key: torch.cat([labelled[key], unlabelled[key]]) for key in unlabelled}


def collate_unlabelled(rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack the rows' pixels (and masks); refuse images of different sizes with the reason."""
    shapes = {tuple(torch.as_tensor(row["pixel_values"]).shape) for row in rows}
    if len(shapes) > 1:
        raise ValueError(
            f"unlabelled images of different sizes in one micro-batch ({sorted(shapes)}); prepare them at one size "
            "(an image processor with a fixed size, or padding to a common size)"
        )
    batch = {"pixel_values": torch.stack([torch.as_tensor(row["pixel_values"]) for row in rows])}
    if all("pixel_mask" in row for row in rows):
        batch["pixel_mask"] = torch.stack([torch.as_tensor(row["pixel_mask"]) for row in rows])
    return batch


class UnlabelledImageTransform:
    """``images.with_transform(UnlabelledImageTransform(processor))``: rows with ``image`` -> ``pixel_values``
    (and ``pixel_mask`` when the processor pads), the student's preprocessing without annotations."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        if "image" not in batch:
            raise ValueError(f"unlabelled images need an 'image' column (got {sorted(batch)})")
        encoded = self.processor(
            images=[image.convert("RGB") for image in batch["image"]], return_tensors="pt"
        )
        return {key: encoded[key] for key in UNLABELLED_COLUMNS if key in encoded}
