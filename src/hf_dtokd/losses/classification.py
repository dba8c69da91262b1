"""Image-classification losses: the task loss and logit knowledge distillation.

Both are computed in float32 whatever the autocast dtype (bf16 / fp8 runs), with an explicit
``"mean"`` reduction over the micro-batch, so that gradient accumulation can divide by the
number of micro-batches and recover the mean over the optimizer step's samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def task_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy ``mean_b CE(z_b, y_b)`` with optional label smoothing, in float32."""
    return F.cross_entropy(logits.float(), labels, reduction="mean", label_smoothing=label_smoothing)


def logit_kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Hinton logit distillation, ``T^2 * mean_b KL(softmax(z_t/T) || softmax(z_s/T))``, in float32.

    The ``T^2`` factor keeps the gradient magnitude independent of ``T`` (Hinton et al., 2015).
    DTO-KD's trade-off uses log-gradients, which are unchanged by this factor.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ "
            "in shape; the label spaces must match (or pass teacher_label_indices to map teacher classes)."
        )
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2
