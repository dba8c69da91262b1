"""Image-classification losses: the task loss and logit knowledge distillation.

Both are computed in float32 whatever the autocast dtype (bf16 / fp8 runs) as means over the
micro-batch; the trainer turns them into the mean over the optimizer step's samples under gradient
accumulation and data parallelism (``trainer/window_means.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: A label that marks an unlabelled example (transformers' and PyTorch's ignore index): it gets the
#: distillation loss but no task loss, the semi-supervised setting where the teacher labels a transfer set.
IGNORE_INDEX = -100


def is_soft(labels: torch.Tensor) -> bool:
    """Soft targets: a floating ``(B, C)`` tensor of class probabilities (Mixup / CutMix, timm's ``Mixup``)."""
    return labels.is_floating_point() and labels.dim() == 2


def labelled_mask(labels: torch.Tensor) -> torch.Tensor:
    """``(B,)`` booleans: which examples carry a task label (every row of soft targets; hard labels but -100)."""
    if is_soft(labels):
        return torch.ones(labels.shape[0], dtype=torch.bool, device=labels.device)
    return labels != IGNORE_INDEX


def task_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy ``mean_{b: y_b != -100} CE(z_b, y_b)`` with optional label smoothing, in float32.

    ``labels`` are class indices, or soft targets (``is_soft``: ``CE = -sum_c y_c log softmax(z)_c`` per
    row, every row labelled; Mixup / CutMix batches). Examples labelled ``IGNORE_INDEX`` are left out of the mean. A micro-batch with no labelled example
    gives 0 with a zero gradient (``F.cross_entropy`` would give 0 / 0 = NaN). The trainer rescales this
    micro-batch mean so that a window's task loss is the mean over its labelled examples however they are
    spread over micro-batches and processes (``trainer/window_means.py``).
    """
    if is_soft(labels):
        if labels.shape != logits.shape:
            raise ValueError(
                f"soft targets of shape {tuple(labels.shape)} for logits of shape {tuple(logits.shape)}: build them "
                "with the student's number of classes (e.g. timm's Mixup(num_classes=...))"
            )
        total = F.cross_entropy(
            logits.float(), labels.float(), reduction="sum", label_smoothing=label_smoothing
        )
        return total / max(labels.shape[0], 1)
    total = F.cross_entropy(
        logits.float(), labels, reduction="sum", ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing
    )
    # sum / count without a host sync; an all-ignored batch is 0 / 1 with a zero gradient
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


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
