"""Detection distillation for DETR-family detectors: match student queries to the teacher's, then distil.

Query predictions carry no order, so the student's queries are first matched one to one to the
teacher's (Hungarian matching with scipy's ``linear_sum_assignment``, the solver transformers' DETR
matcher uses). The teacher's queries are ranked by confidence and the top ``k = min(Q_s, Q_t)`` are
kept, so the two models may have different numbers of queries. The matching cost is DETR's, with the
teacher's top class standing for the ground-truth class (our documented choice)::

    C[i, j] = -w_cls * p_s,i(c_j) + w_L1 * ||b_s,i - b_t,j||_1 - w_giou * GIoU(b_s,i, b_t,j),
    c_j = argmax_c p_t,j(c),  (w_cls, w_L1, w_giou) = (1, 5, 2)   (DETR's matcher defaults)

On the matched pairs M (over the batch):

* class KD   ``T^2 * mean_{(i,j) in M} KL(p_t,j^T || p_s,i^T)``: softmax over the C + 1 outputs (C classes
  and "no object") for softmax heads (DETR, YOLOS), mean over classes of the binary KL of the
  sigmoids for sigmoid / focal heads (Conditional and Deformable DETR, RT-DETR, D-FINE). Low-confidence
  teacher queries are kept: they teach the student where there is nothing.
* box KD     ``sum_M w_j (||b_s,i - b_t,j||_1 + 1 - GIoU(b_s,i, b_t,j)) / sum_M w_j``, ``w_j`` the
  teacher's confidence (its best class probability) where it is at least ``threshold``, else 0; 0 when
  no teacher box reaches it (the loss stays in the graph, with zero gradient).

* token KD   (``query_token_kd_loss``) ViDT-style token matching on the same pairs: the student's
  decoder query states (``last_hidden_state`` of the matched queries) through a projector into the
  teacher's width, against the teacher's matched query states, with the projector's loss
  (``signals/projectors.py``: ``linear`` = MSE after DTO-KD's ``P``; ``vkd`` = SmoothL1 after an orthogonal map,
  the teacher standardised by a non-affine layer norm; ``mokd``).

Boxes are normalised ``(cx, cy, w, h)``, the DETR-family ``pred_boxes``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

MATCH_COSTS = (1.0, 5.0, 2.0)  # class, L1, GIoU: DETR's HungarianMatcher defaults

Matches = list[tuple[torch.Tensor, torch.Tensor]]


def query_probabilities(logits: torch.Tensor, softmax_head: bool, temperature: float = 1.0) -> torch.Tensor:
    """Per-query class probabilities: softmax over all outputs (incl. "no object"), or per-class sigmoids."""
    scaled = logits.float() / temperature
    return scaled.softmax(-1) if softmax_head else scaled.sigmoid()


def detection_scores(logits: torch.Tensor, softmax_head: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query confidence and class: the best real class (the "no object" output of softmax heads excluded)."""
    probabilities = query_probabilities(logits, softmax_head)
    if softmax_head:
        probabilities = probabilities[..., :-1]
    return probabilities.max(-1)


def match_to_teacher(
    student_logits: torch.Tensor,
    student_boxes: torch.Tensor,
    teacher_logits: torch.Tensor,
    teacher_boxes: torch.Tensor,
    softmax_head: bool,
    costs: tuple[float, float, float] = MATCH_COSTS,
) -> Matches:
    """Per image, ``(student query indices, teacher query indices)`` of the Hungarian matching (see module)."""
    if (
        student_logits.shape[0] != teacher_logits.shape[0]
        or student_logits.shape[-1] != teacher_logits.shape[-1]
    ):
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} must "
            "have the same batch size and class outputs (queries may differ); map the teacher's classes with "
            "teacher_label_indices"
        )
    w_class, w_l1, w_giou = costs
    k = min(student_logits.shape[1], teacher_logits.shape[1])
    with torch.no_grad():
        student_probabilities = query_probabilities(student_logits, softmax_head)
        teacher_scores, teacher_classes = detection_scores(teacher_logits, softmax_head)
        matches: Matches = []
        for b in range(student_logits.shape[0]):
            kept = teacher_scores[b].topk(k).indices
            class_cost = -student_probabilities[b][:, teacher_classes[b, kept]]
            l1_cost = torch.cdist(student_boxes[b].float(), teacher_boxes[b, kept].float(), p=1)
            giou = generalized_box_iou(
                box_convert(student_boxes[b].float(), "cxcywh", "xyxy"),
                box_convert(teacher_boxes[b, kept].float(), "cxcywh", "xyxy"),
            )
            cost = w_class * class_cost + w_l1 * l1_cost - w_giou * giou
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            device = student_logits.device
            matches.append(
                (
                    torch.as_tensor(rows, dtype=torch.long, device=device),
                    kept[torch.as_tensor(cols, device=kept.device)],
                )
            )
    return matches


def _gather(values: torch.Tensor, matches: Matches, side: int) -> torch.Tensor:
    return torch.cat([values[b, pair[side].to(values.device)] for b, pair in enumerate(matches)])


def class_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    matches: Matches,
    temperature: float,
    softmax_head: bool,
) -> torch.Tensor:
    """``T^2 * mean over matched pairs`` of KL(teacher || student) at temperature ``T`` (see module), float32."""
    student = _gather(student_logits, matches, 0).float() / temperature
    teacher = _gather(teacher_logits, matches, 1).float() / temperature
    if student.shape[0] == 0:
        return student_logits.float().sum() * 0.0
    if softmax_head:
        kl = F.kl_div(
            student.log_softmax(-1), teacher.log_softmax(-1), reduction="none", log_target=True
        ).sum(-1)
    else:  # binary KL per class: p log(p/q) + (1-p) log((1-p)/(1-q)), from log-sigmoids for stability
        p = teacher.sigmoid()
        kl = (
            p * (F.logsigmoid(teacher) - F.logsigmoid(student))
            + (1 - p) * (F.logsigmoid(-teacher) - F.logsigmoid(-student))
        ).mean(-1)
    return kl.mean() * temperature**2


def box_kd_loss(
    student_boxes: torch.Tensor,
    teacher_boxes: torch.Tensor,
    teacher_confidence: torch.Tensor,
    matches: Matches,
    threshold: float,
) -> torch.Tensor:
    """Confidence-weighted ``L1 + (1 - GIoU)`` from matched student boxes to teacher boxes (see module)."""
    student = _gather(student_boxes, matches, 0).float()
    teacher = _gather(teacher_boxes, matches, 1).float()
    confidence = _gather(teacher_confidence, matches, 1).float()
    weights = torch.where(confidence >= threshold, confidence, torch.zeros_like(confidence))
    if student.shape[0] == 0:
        return student_boxes.float().sum() * 0.0
    l1 = (student - teacher).abs().sum(-1)
    giou = torch.diagonal(
        generalized_box_iou(box_convert(student, "cxcywh", "xyxy"), box_convert(teacher, "cxcywh", "xyxy"))
    )
    # no teacher box above the threshold: 0 / tiny = 0, without a host sync to test for it
    return (weights * (l1 + 1 - giou)).sum() / weights.sum().clamp_min(torch.finfo(torch.float32).tiny)


def query_states(outputs: Any, num_queries: int) -> torch.Tensor:
    """The decoder's (or YOLOS's detection tokens') last states of the ``num_queries`` matching queries."""
    states = outputs.get("last_hidden_state") if hasattr(outputs, "get") else None
    if states is None:
        raise ValueError(
            f"{type(outputs).__name__} has no last_hidden_state; token KD needs the detector's query states "
            "(DETR-family and YOLOS outputs carry them)"
        )
    return states[:, -num_queries:]  # RT-DETR's denoising queries and YOLOS's patch tokens come first


def query_token_kd_loss(
    projector: nn.Module, student_states: torch.Tensor, teacher_states: torch.Tensor, matches: Matches
) -> torch.Tensor:
    """The projector's loss between matched student and teacher query states (as ``1 x d x M x 1`` maps)."""
    student = _gather(student_states, matches, 0)
    teacher = _gather(teacher_states, matches, 1)
    if student.shape[0] == 0:
        return student_states.float().sum() * 0.0
    as_map = lambda x: x.T[None, :, :, None]  # noqa: E731  (M, d) -> (1, d, M, 1): one "pixel" per query
    return projector.loss(as_map(student), as_map(teacher))
