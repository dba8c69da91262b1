"""Semantic-segmentation losses on per-pixel class logits ``(B, C, h, w)``, in float32.

Student and teacher may predict at different resolutions (SegFormer at a quarter of its input, UperNet at the
input size, the teacher at its own input size): every loss first resamples the logits to the label size
``(H, W)`` (bilinear, ``align_corners=False``, as transformers' segmentation heads upsample for their own loss).

* task  ``CE(up(z_s), y)`` averaged over the pixels whose label is not ``ignore_index`` (255 in ADE20K /
  SegFormer); 0 with a zero gradient when every pixel is ignored.
* pixel KD (per-pixel KL at temperature ``T``, Hinton's KD at every pixel)::

      L_pixel = T^2 / (B H W) sum_{b, i} KL(softmax_c(t_{b,:,i} / T) || softmax_c(s_{b,:,i} / T))

* channel KD (CWD, Shu et al., ICCV 2021, "Channel-wise Knowledge Distillation for Dense Prediction"): each
  channel's map is turned into a distribution over the spatial positions, and the student's matched to the
  teacher's::

      phi(y)_{b,c,i} = softmax_i(y_{b,c,i} / T),
      L_channel = T^2 / (B C) sum_{b, c} KL(phi(t)_{b,c,:} || phi(s)_{b,c,:})

  (the normalisation by ``B C`` and the ``T^2`` factor are those of the authors' released code).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: the kinds of segmentation KD, in the order of their objectives when they are not grouped
SEGMENTATION_KD_TERMS = ("pixel_kd", "channel_kd")


def resample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, C, h, w)`` logits at ``size`` (bilinear, float32); unchanged when they are already at that size."""
    logits = logits.float()
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def segmentation_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Cross-entropy of the logits (resampled to the labels' size) with the labels, ignoring ``ignore_index``."""
    upsampled = resample_logits(logits, tuple(labels.shape[-2:]))
    total = F.cross_entropy(upsampled, labels.long(), ignore_index=ignore_index, reduction="sum")
    # the mean over labelled pixels; 0 (not 0 / 0) when every pixel is ignored, without a host sync
    return total / (labels != ignore_index).sum().clamp_min(1)


def pixel_kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Per-pixel ``T^2 KL(teacher || student)`` over the classes, averaged over the pixels (see module)."""
    _check_same_classes(student_logits, teacher_logits)
    student = student_logits.float() / temperature
    teacher = teacher_logits.float() / temperature
    kl = F.kl_div(student.log_softmax(1), teacher.log_softmax(1), reduction="none", log_target=True).sum(1)
    return kl.mean() * temperature**2


def channel_kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """CWD: per channel, ``KL`` of the spatial softmaxes at temperature ``T``, ``T^2 / (B C)`` (see module)."""
    _check_same_classes(student_logits, teacher_logits)
    batch, channels = student_logits.shape[:2]
    student = student_logits.float().reshape(batch, channels, -1) / temperature
    teacher = teacher_logits.float().reshape(batch, channels, -1) / temperature
    kl = F.kl_div(student.log_softmax(-1), teacher.log_softmax(-1), reduction="sum", log_target=True)
    return kl * temperature**2 / (batch * channels)


def _check_same_classes(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} must "
            "have the same shape (resample them to the label size; map the teacher's classes with "
            "teacher_label_indices)"
        )
