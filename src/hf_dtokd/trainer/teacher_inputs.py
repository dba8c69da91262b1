"""Converting the student's pixel batch into the teacher's input space.

Teacher and student may expect different resolutions and normalisations (a CNN teacher at 224
with ImageNet statistics, a ViT student at 32 with mean 0.5). Like timm's
``DistillationTeacher.normalize_input``, the trainer converts the student's *normalised* batch::

    x_raw = x * std_student + mean_student             (back to [0, 1] pixel space)
    x_raw = resize(x_raw, teacher_size)                (bilinear, antialiased)
    x_teacher = (x_raw - mean_teacher) / std_teacher

from the two image processors' configs. Crops, padding and colour conversions that a processor
may apply are not re-done: when the teacher needs its own preprocessing, put its pixels in the
batch under ``teacher_pixel_values`` and the trainer uses them unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PixelSpace:
    """What a model expects: per-channel mean and std after rescaling to [0, 1], and (H, W) or None."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: tuple[int, int] | None

    @classmethod
    def from_processor(cls, processor: Any) -> PixelSpace:
        """Read the space from a transformers image processor (including timm's wrapper processor)."""
        data_config = getattr(processor, "data_config", None)
        if isinstance(data_config, dict) and "mean" in data_config:  # TimmWrapperImageProcessor
            _, height, width = data_config.get("input_size", (3, None, None))
            size = (int(height), int(width)) if height else None
            return cls(tuple(data_config["mean"]), tuple(data_config["std"]), size)
        if getattr(processor, "image_mean", None) is None or getattr(processor, "image_std", None) is None:
            raise ValueError(
                f"{type(processor).__name__} has no image_mean/image_std; pass an image processor, or put the "
                "teacher's own pixels in the batch under 'teacher_pixel_values'"
            )
        do_normalize = getattr(processor, "do_normalize", True)
        mean = _per_channel(processor.image_mean) if do_normalize else (0.0,)
        std = _per_channel(processor.image_std) if do_normalize else (1.0,)
        return cls(mean, std, _processor_size(processor))


def _per_channel(value: float | Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in value) if isinstance(value, Sequence) else (float(value),)


def _processor_size(processor: Any) -> tuple[int, int] | None:
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    size = crop or getattr(processor, "size", None)
    if size is None:
        return None
    if not isinstance(size, dict):
        size = dict(size)
    if size.get("height") and size.get("width"):
        return int(size["height"]), int(size["width"])
    if size.get("shortest_edge"):
        return int(size["shortest_edge"]), int(size["shortest_edge"])
    return None


class TeacherInputConverter:
    """Maps normalised student pixels to normalised teacher pixels (identity when the spaces agree)."""

    def __init__(self, student: PixelSpace, teacher: PixelSpace) -> None:
        self.student, self.teacher = student, teacher
        self.renormalise = (student.mean, student.std) != (teacher.mean, teacher.std)
        self._statistics: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}

    @property
    def is_identity(self) -> bool:
        return not self.renormalise and (self.teacher.size is None or self.teacher.size == self.student.size)

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.is_identity:
            return pixel_values
        x = pixel_values.float()
        if self.renormalise:
            student_mean, student_std, teacher_mean, teacher_std = self._channel_statistics(x)
            x = x * student_std + student_mean
        if self.teacher.size is not None and tuple(x.shape[-2:]) != self.teacher.size:
            x = F.interpolate(x, size=self.teacher.size, mode="bilinear", align_corners=False, antialias=True)
        if self.renormalise:
            x = (x - teacher_mean) / teacher_std
        return x.to(pixel_values.dtype)

    def _channel_statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Mean/std as (1, C, 1, 1) tensors on ``like``'s device, built once (no host copy per step)."""
        key = (like.device, like.dtype)
        if key not in self._statistics:
            values = (self.student.mean, self.student.std, self.teacher.mean, self.teacher.std)
            self._statistics[key] = tuple(
                torch.tensor(v, dtype=like.dtype, device=like.device).view(1, -1, 1, 1) for v in values
            )
        return self._statistics[key]
