"""DeiT's distillation token (Touvron et al., ICML 2021): a second head trained on the teacher's output.

A DeiT student carries two tokens, each with its linear head: the class token's logits ``z_cls`` and
the distillation token's logits ``z_dist``. The two objectives are::

    L_task    = CE(z_cls, y)                                   (the class head learns the labels)
    L_distill = T^2 KL(softmax(z_t / T) || softmax(z_dist / T))  (soft distillation), or
    L_distill = CE(z_dist, argmax z_t)                          (hard distillation, DeiT's default)

and the prediction is the mean of the two heads' logits (what transformers'
``DeiTForImageClassificationWithTeacher`` returns as ``logits``). DeiT weighs the losses 1/2 : 1/2; in
hf-dtokd they are two objectives that any trade-off method balances. Both in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hf_dtokd.losses.classification import logit_kd_loss, task_cross_entropy

DEIT_DISTILLATION: tuple[str, ...] = ("soft", "hard")


def hard_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``mean_b CE(z_s, argmax z_t)``: the teacher's top class as a hard label, in float32."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ "
            "in shape; the label spaces must match (or pass teacher_label_indices)"
        )
    return F.cross_entropy(student_logits.float(), teacher_logits.argmax(dim=-1), reduction="mean")


def deit_token_losses(
    cls_logits: torch.Tensor,
    distillation_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    distillation: str = "hard",
    temperature: float = 1.0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``(L_distill, L_task)`` of a two-head DeiT student."""
    if distillation == "hard":
        distill = hard_distillation_loss(distillation_logits, teacher_logits)
    elif distillation == "soft":
        distill = logit_kd_loss(distillation_logits, teacher_logits, temperature)
    else:
        raise ValueError(
            f"unknown DeiT distillation {distillation!r}; valid values: {', '.join(DEIT_DISTILLATION)}"
        )
    return torch.stack([distill, task_cross_entropy(cls_logits, labels, label_smoothing)])
