"""Projectors from a student stage to its teacher stage, each with its feature loss.

For a student map ``s`` (``B x C_s x H x W``, resampled to the teacher's size) and a teacher map ``t``
(``B x C_t x H x W``), each projector defines ``L_feat(s, t)``, a mean over positions:

* ``"linear"`` (DTO-KD's ``P``): a 1x1 convolution ``P: C_s -> C_t`` (with bias);
  ``L = mean (P s - t)^2``;
* ``"vkd"`` (VkD, Miles et al. CVPR 2024): an orthogonal map ``W`` (``W W^T = I`` when
  ``C_s <= C_t``, else ``W^T W = I``; torch's orthogonal parametrization keeps it so after every step)
  and the teacher standardised by a non-affine layer norm over channels;
  ``L = SmoothL1(W s, LN(t))``;
* ``"mokd"`` (**MoKD-style**: the exact projector of MoKD is not public; this is our reading of
  "a high-dimensional subspace"): both sides are lifted into a shared space of dimension
  ``d = 2 max(C_s, C_t)``, the student by a learned linear map, the teacher by a *fixed* random
  isometry (orthonormal columns, so distances between teacher features are kept and the loss cannot
  be lowered by collapsing the target); ``L = mean (A s - Q LN(t))^2``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

PROJECTORS: tuple[str, ...] = ("linear", "vkd", "mokd")


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def channel_layer_norm(t: torch.Tensor) -> torch.Tensor:
    """Non-affine layer norm over the channels of ``(B, C, H, W)``."""
    return F.layer_norm(_channels_last(t).float(), (t.shape[1],)).permute(0, 3, 1, 2)


class LinearProjector(nn.Module):
    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)

    def project(self, s: torch.Tensor) -> torch.Tensor:
        return self.proj(s)

    def loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.project(s).float(), t.float())


class VkDProjector(nn.Module):
    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.proj = orthogonal(nn.Linear(student_channels, teacher_channels, bias=False))

    def project(self, s: torch.Tensor) -> torch.Tensor:
        return self.proj(_channels_last(s)).permute(0, 3, 1, 2)

    def loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.smooth_l1_loss(self.project(s).float(), channel_layer_norm(t))


class MoKDStyleProjector(nn.Module):
    def __init__(self, student_channels: int, teacher_channels: int, seed: int = 0) -> None:
        super().__init__()
        dim = 2 * max(student_channels, teacher_channels)
        self.lift_student = nn.Linear(student_channels, dim)
        generator = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(dim, teacher_channels, generator=generator))
        self.register_buffer("lift_teacher", q)  # (dim, C_t), orthonormal columns, never trained

    def project(self, s: torch.Tensor) -> torch.Tensor:
        return self.lift_student(_channels_last(s)).permute(0, 3, 1, 2)

    def loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        target = _channels_last(channel_layer_norm(t)) @ self.lift_teacher.T
        return F.mse_loss(self.project(s).float(), target.permute(0, 3, 1, 2))


def build_projector(kind: str, student_channels: int, teacher_channels: int) -> nn.Module:
    if kind == "linear":
        return LinearProjector(student_channels, teacher_channels)
    if kind == "vkd":
        return VkDProjector(student_channels, teacher_channels)
    if kind == "mokd":
        return MoKDStyleProjector(student_channels, teacher_channels)
    raise ValueError(f"unknown projector {kind!r}; valid values: {', '.join(PROJECTORS)}")
