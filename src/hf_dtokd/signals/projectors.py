"""Projectors from a student stage to its teacher stage, each with its feature loss.

For a student map ``s`` (``B x C_s x H x W``, resampled to the teacher's size) and a teacher map ``t``
(``B x C_t x H x W``), each projector defines ``L_feat(s, t)``, a mean over positions:

* ``"linear"`` (DTO-KD's ``P``): a 1x1 convolution ``P: C_s -> C_t`` (with bias);
  ``L = mean (P s - t)^2``;
* ``"vkd"`` (VkD, Miles et al. CVPR 2024): an orthogonal map ``W`` (``W W^T = I`` when
  ``C_s <= C_t``, else ``W^T W = I``; torch's orthogonal parametrization by the exponential map keeps it
  so after every step, weight decay included)
  and the teacher standardised by a non-affine layer norm over channels;
  ``L = SmoothL1(W s, LN(t))``;
* ``"mokd"`` (**MoKD-style**: MoKD's exact projector is not public; this is our reading of its
  "subspace learning"): a *learnable* rank-``r`` subspace of the standardised teacher, both sides projected
  into it. ``U`` (``r x C_t``, orthonormal rows, kept so by torch's orthogonal parametrization) projects
  ``LN(t)``, a linear map ``B: C_s -> r`` the student, and the loss is the relative error in the subspace::

      L(s, t) = sum ||B s - U LN(t)||^2 / sum ||U LN(t)||^2        (sums over the batch and positions)

  Why it is not a linear projector in disguise: for a fixed isometry ``Q`` on the teacher side,
  ``||A s - Q t||^2 = ||Q^T A s - t||^2 + ||(I - Q Q^T) A s||^2`` is a linear projector onto the whole
  teacher plus a penalty, and every teacher direction must be fitted. Here ``U`` is trained: at a fixed
  student, the minimum over ``B`` leaves ``1 - R^2`` of the regression of ``U LN(t)`` on ``s``, and the
  minimum over ``U`` keeps the ``r`` teacher directions the student predicts best (a generalised
  eigenproblem, as in canonical correlation); teacher directions outside the subspace cost nothing, which a
  linear projector cannot express (``tests/signals/test_projectors.py`` builds a teacher where the two optima
  differ). Two choices keep the subspace from a trivial minimum: the relative error (with the plain squared
  error, the teacher's least-varying directions would win), and ``U`` confined to the directions orthogonal
  to the all-ones vector, which the layer norm zeroes (there ``0 / 0`` would cost nothing). ``r`` must be
  below ``C_t - 1`` (``r = C_t - 1`` spans every direction LN leaves, a linear projector again); default
  ``min(C_s, C_t // 2)``, at least 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

PROJECTORS: tuple[str, ...] = ("linear", "vkd", "mokd")
#: torch's orthogonal parametrization by the exponential map, whatever the shape. Its default for a
#: non-square matrix, Householder reflectors, reads the signs of the columns from the integer part of the
#: trainable matrix's diagonal: the first step of decoupled weight decay (AdamW, the Trainer's optimizer) takes
#: that diagonal from 1 to just below 1, its integer part to 0, and the map to the zero matrix for good (the
#: loss then stays at the teacher's own SmoothL1 and no gradient reaches the student). The exponential map of
#: a skew-symmetric generator stays orthogonal whatever the optimizer does to the generator.
ORTHOGONAL = {"orthogonal_map": "matrix_exp"}


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
        self.proj = orthogonal(nn.Linear(student_channels, teacher_channels, bias=False), **ORTHOGONAL)

    def project(self, s: torch.Tensor) -> torch.Tensor:
        return self.proj(_channels_last(s)).permute(0, 3, 1, 2)

    def loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.smooth_l1_loss(self.project(s).float(), channel_layer_norm(t))


class MoKDStyleProjector(nn.Module):
    """A learnable rank-``r`` teacher subspace with both sides projected into it (see the module)."""

    def __init__(self, student_channels: int, teacher_channels: int, rank: int | None = None) -> None:
        super().__init__()
        if teacher_channels < 3:
            raise ValueError(
                f"a learnable teacher subspace needs at least 3 teacher channels, got {teacher_channels}; use "
                "projector='linear' or 'vkd' for this stage"
            )
        rank = max(1, min(student_channels, teacher_channels // 2)) if rank is None else rank
        if not 1 <= rank < teacher_channels - 1:
            raise ValueError(
                f"rank must lie in [1, {teacher_channels - 1}) for {teacher_channels} teacher channels (a proper "
                f"subspace of what the layer norm leaves), got {rank}"
            )
        self.rank = rank
        self.student_map = nn.Linear(student_channels, rank)
        # a fixed orthonormal basis (C_t, C_t - 1) of the directions orthogonal to the all-ones vector
        ones_first = torch.cat([torch.ones(teacher_channels, 1), torch.eye(teacher_channels)[:, :-1]], dim=1)
        basis, _ = torch.linalg.qr(ones_first)
        self.register_buffer("centred_basis", basis[:, 1:].contiguous())
        self.teacher_basis = orthogonal(nn.Linear(teacher_channels - 1, rank, bias=False), **ORTHOGONAL)

    @property
    def subspace(self) -> torch.Tensor:
        """``U`` (``r x C_t``, orthonormal rows, orthogonal to the all-ones vector)."""
        return self.teacher_basis.weight @ self.centred_basis.T

    def project(self, s: torch.Tensor) -> torch.Tensor:
        return self.student_map(_channels_last(s)).permute(0, 3, 1, 2)

    def project_teacher(self, t: torch.Tensor) -> torch.Tensor:
        return (_channels_last(channel_layer_norm(t)) @ self.subspace.T).permute(0, 3, 1, 2)

    def loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        target = self.project_teacher(t)
        error = (self.project(s).float() - target).pow(2).sum()
        return error / target.pow(2).sum().clamp(min=torch.finfo(torch.float32).tiny)


def build_projector(kind: str, student_channels: int, teacher_channels: int) -> nn.Module:
    if kind == "linear":
        return LinearProjector(student_channels, teacher_channels)
    if kind == "vkd":
        return VkDProjector(student_channels, teacher_channels)
    if kind == "mokd":
        return MoKDStyleProjector(student_channels, teacher_channels)
    raise ValueError(f"unknown projector {kind!r}; valid values: {', '.join(PROJECTORS)}")
