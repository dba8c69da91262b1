"""Multi-scale features of students and teachers, their pairing, and the resampling between them.

Both sides give one feature map per stage from ``output_hidden_states=True``, as ``(B, C, H, W)``:

* transformers CNNs (ResNet, ConvNeXt, RegNet, ...): ``hidden_states`` are already stage maps;
* ViT / DeiT: ``hidden_states`` are token sequences ``(B, N, D)``: the prefix tokens (class,
  distillation) are dropped and the ``g x g`` patch tokens are laid out as a map ``(B, D, g, g)``;
* Swin: ``reshaped_hidden_states`` (already maps) are used.

The first entry (the embeddings) is not a stage and is skipped. ``pair_stages`` pairs student and
teacher stages: by default ``min(S, T)`` pairs, evenly spaced over both and always ending at the
last stage of each; or the user's lists. A student map is resampled to its teacher's spatial size
(bilinear, antialiased when it shrinks) after its projector has matched the channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F


def stage_features(outputs: Any, role: str) -> list[torch.Tensor]:
    """The stage maps ``(B, C, H, W)`` of a model output computed with ``output_hidden_states=True``."""
    hidden = _get(outputs, "reshaped_hidden_states") or _get(outputs, "hidden_states")
    if not hidden:
        raise ValueError(
            f"the {role} returned no hidden_states; feature distillation needs a model that accepts "
            "output_hidden_states=True (transformers ViT/DeiT/Swin/ResNet/ConvNeXt/RegNet)"
        )
    return [_as_map(h, role) for h in list(hidden)[1:]]


def _get(outputs: Any, key: str) -> Any:
    return outputs.get(key) if isinstance(outputs, dict) else getattr(outputs, key, None)


def _as_map(hidden: torch.Tensor, role: str) -> torch.Tensor:
    if hidden.dim() == 4:
        return hidden
    if hidden.dim() != 3:
        raise ValueError(
            f"the {role}'s hidden state has shape {tuple(hidden.shape)}; expected (B, N, D) or (B, C, H, W)"
        )
    tokens = hidden.shape[1]
    side = math.isqrt(tokens)
    while (
        side > 0 and tokens - side * side > 8
    ):  # at most a few prefix tokens (class, distillation, registers)
        side -= 1
    grid = side * side
    if side == 0 or tokens - grid > 8:
        raise ValueError(f"the {role}'s {tokens} tokens do not hold a square patch grid")
    patches = hidden[:, tokens - grid :]
    return patches.transpose(1, 2).reshape(hidden.shape[0], hidden.shape[2], side, side)


def evenly_spaced(count: int, available: int) -> list[int]:
    """``count`` indices in ``range(available)``, evenly spaced and ending at the last one."""
    if count == 1:
        return [available - 1]
    return sorted({round(i * (available - 1) / (count - 1)) for i in range(count)})


def pair_stages(
    num_student: int,
    num_teacher: int,
    student_stages: Sequence[int] | None = None,
    teacher_stages: Sequence[int] | None = None,
    names: tuple[str, str] = ("student", "teacher"),
) -> list[tuple[int, int]]:
    """(student stage, teacher stage) pairs; a ValueError names the model and its available stages."""
    for stages, available, role in (
        (student_stages, num_student, names[0]),
        (teacher_stages, num_teacher, names[1]),
    ):
        if stages is not None:
            bad = [s for s in stages if not 0 <= s < available]
            if bad:
                raise ValueError(
                    f"feature stages {bad} do not exist: the {role} exposes {available} stages "
                    f"(valid: {list(range(available))})"
                )
    if (student_stages is None) != (teacher_stages is None):
        raise ValueError("give both student and teacher feature stages, or neither (evenly spaced pairs)")
    if student_stages is not None:
        if len(student_stages) != len(teacher_stages) or not student_stages:
            raise ValueError(
                f"feature stages must pair one to one: {len(student_stages)} student and {len(teacher_stages)} "
                "teacher stages given"
            )
        return list(zip(student_stages, teacher_stages))
    count = min(num_student, num_teacher)
    return list(zip(evenly_spaced(count, num_student), evenly_spaced(count, num_teacher)))


def resample_to(student_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resampling of ``(B, C, H, W)`` to ``size`` (antialiased when shrinking)."""
    if tuple(student_map.shape[-2:]) == tuple(size):
        return student_map
    shrinking = student_map.shape[-2] > size[0] or student_map.shape[-1] > size[1]
    return F.interpolate(student_map, size=size, mode="bilinear", align_corners=False, antialias=shrinking)
