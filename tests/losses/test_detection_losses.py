"""Detection KD terms pinned against independent computations on hand-made predictions."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from hf_dtokd.losses.detection import (
    MATCH_COSTS,
    box_kd_loss,
    class_kd_loss,
    detection_scores,
    match_to_teacher,
)


def giou_by_hand(a: list[float], b: list[float]) -> float:
    """GIoU of two cxcywh boxes, written out (no torchvision)."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = a[2] * a[3] + b[2] * b[3] - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (hull - union) / hull


def kl_softmax_by_hand(teacher: list[float], student: list[float], t: float) -> float:
    p = [math.exp(v / t) for v in teacher]
    q = [math.exp(v / t) for v in student]
    p, q = [v / sum(p) for v in p], [v / sum(q) for v in q]
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def kl_sigmoid_by_hand(teacher: list[float], student: list[float], t: float) -> float:
    total = 0.0
    for zt, zs in zip(teacher, student):
        p, q = 1 / (1 + math.exp(-zt / t)), 1 / (1 + math.exp(-zs / t))
        total += p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    return total / len(teacher)


# one image, 2 student and 2 teacher queries; the student's query 0 sits on the teacher's query 1
STUDENT_BOXES = torch.tensor([[[0.70, 0.70, 0.20, 0.20], [0.30, 0.30, 0.20, 0.20]]])
TEACHER_BOXES = torch.tensor([[[0.32, 0.28, 0.20, 0.24], [0.72, 0.69, 0.18, 0.20]]])
STUDENT_LOGITS = torch.tensor([[[0.2, 1.0, -0.5], [1.5, -0.3, 0.1]]])
TEACHER_LOGITS = torch.tensor([[[2.0, -1.0, 0.0], [-0.5, 2.5, 0.3]]])


def test_matching_pairs_queries_that_sit_on_each_other() -> None:
    for softmax in (True, False):
        ((rows, cols),) = match_to_teacher(
            STUDENT_LOGITS, STUDENT_BOXES, TEACHER_LOGITS, TEACHER_BOXES, softmax
        )
        pairs = dict(zip(rows.tolist(), cols.tolist()))
        assert pairs == {0: 1, 1: 0}


def test_matching_minimises_the_documented_cost_over_all_assignments() -> None:
    torch.manual_seed(0)
    student_logits, teacher_logits = torch.randn(1, 4, 3), torch.randn(1, 4, 3)
    student_boxes = torch.rand(1, 4, 4) * 0.4 + 0.2
    teacher_boxes = torch.rand(1, 4, 4) * 0.4 + 0.2
    w_class, w_l1, w_giou = MATCH_COSTS
    p = student_logits.softmax(-1)[0]
    teacher_class = teacher_logits.softmax(-1)[0, :, :-1].argmax(-1)

    def cost(i: int, j: int) -> float:
        l1 = float((student_boxes[0, i] - teacher_boxes[0, j]).abs().sum())
        giou = giou_by_hand(student_boxes[0, i].tolist(), teacher_boxes[0, j].tolist())
        return -w_class * float(p[i, teacher_class[j]]) + w_l1 * l1 - w_giou * giou

    best = min(sum(cost(i, j) for i, j in enumerate(perm)) for perm in itertools.permutations(range(4)))
    ((rows, cols),) = match_to_teacher(student_logits, student_boxes, teacher_logits, teacher_boxes, True)
    assert sum(cost(i, j) for i, j in zip(rows.tolist(), cols.tolist())) == pytest.approx(best, abs=1e-5)


@pytest.mark.parametrize("softmax", [True, False])
def test_class_kd_equals_a_hand_computation(softmax: bool) -> None:
    t = 2.0
    matches = match_to_teacher(STUDENT_LOGITS, STUDENT_BOXES, TEACHER_LOGITS, TEACHER_BOXES, softmax)
    loss = class_kd_loss(STUDENT_LOGITS, TEACHER_LOGITS, matches, t, softmax)
    by_hand = kl_softmax_by_hand if softmax else kl_sigmoid_by_hand
    pairs = [(0, 1), (1, 0)]
    expected = (
        t**2
        * sum(by_hand(TEACHER_LOGITS[0, j].tolist(), STUDENT_LOGITS[0, i].tolist(), t) for i, j in pairs)
        / len(pairs)
    )
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_box_kd_equals_a_hand_computation_and_skips_unconfident_boxes() -> None:
    confidence = torch.tensor([[0.9, 0.2]])  # the teacher's query 1 is below the threshold
    matches = [(torch.tensor([0, 1]), torch.tensor([1, 0]))]
    loss = box_kd_loss(STUDENT_BOXES, TEACHER_BOXES, confidence, matches, threshold=0.1)
    terms = []
    for i, j in [(0, 1), (1, 0)]:
        s, tb = STUDENT_BOXES[0, i].tolist(), TEACHER_BOXES[0, j].tolist()
        l1 = sum(abs(a - b) for a, b in zip(s, tb))
        terms.append((float(confidence[0, j]), l1 + 1 - giou_by_hand(s, tb)))
    expected = sum(w * v for w, v in terms) / sum(w for w, _ in terms)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # threshold 0.5: only the pair (1, 0) with confidence 0.9 counts
    only = box_kd_loss(STUDENT_BOXES, TEACHER_BOXES, confidence, matches, threshold=0.5)
    assert float(only) == pytest.approx(terms[1][1], rel=1e-5)


def test_no_teacher_box_above_the_threshold_gives_zero_box_kd_with_a_zero_gradient() -> None:
    boxes = STUDENT_BOXES.clone().requires_grad_(True)
    logits = STUDENT_LOGITS.clone().requires_grad_(True)
    confidence = torch.tensor([[0.05, 0.02]])
    matches = match_to_teacher(logits, boxes, TEACHER_LOGITS, TEACHER_BOXES, True)
    box = box_kd_loss(boxes, TEACHER_BOXES, confidence, matches, threshold=0.3)
    box.backward()
    assert float(box) == 0.0 and boxes.grad is not None and float(boxes.grad.abs().sum()) == 0.0
    # class KD still teaches the student where the teacher sees nothing
    assert float(class_kd_loss(logits, TEACHER_LOGITS, matches, 1.0, True)) > 0


def test_different_query_counts_keep_the_most_confident_teacher_queries() -> None:
    torch.manual_seed(1)
    student_logits, student_boxes = torch.randn(2, 3, 4), torch.rand(2, 3, 4) * 0.3 + 0.3
    teacher_logits, teacher_boxes = torch.randn(2, 5, 4), torch.rand(2, 5, 4) * 0.3 + 0.3
    scores, _ = detection_scores(teacher_logits, False)
    matches = match_to_teacher(student_logits, student_boxes, teacher_logits, teacher_boxes, False)
    for b, (rows, cols) in enumerate(matches):
        assert sorted(rows.tolist()) == [0, 1, 2]
        assert set(cols.tolist()) == set(scores[b].topk(3).indices.tolist())
    # more student queries than teacher queries: every teacher query is matched once
    matches = match_to_teacher(teacher_logits, teacher_boxes, student_logits, student_boxes, False)
    assert all(sorted(cols.tolist()) == [0, 1, 2] and len(rows) == 3 for rows, cols in matches)


def test_losses_do_not_depend_on_query_order() -> None:
    torch.manual_seed(2)
    sl, sb = torch.randn(2, 6, 4), torch.rand(2, 6, 4) * 0.3 + 0.3
    tl, tb = torch.randn(2, 4, 4), torch.rand(2, 4, 4) * 0.3 + 0.3
    conf, _ = detection_scores(tl, True)

    def losses(sl, sb, tl, tb, conf):
        m = match_to_teacher(sl, sb, tl, tb, True)
        return float(class_kd_loss(sl, tl, m, 2.0, True)), float(box_kd_loss(sb, tb, conf, m, 0.1))

    ps, pt = torch.randperm(6), torch.randperm(4)
    reference = losses(sl, sb, tl, tb, conf)
    permuted = losses(sl[:, ps], sb[:, ps], tl[:, pt], tb[:, pt], conf[:, pt])
    assert permuted == pytest.approx(reference, rel=1e-6)


def test_a_student_equal_to_its_teacher_has_zero_kd() -> None:
    torch.manual_seed(3)
    logits, boxes = torch.randn(2, 5, 3), torch.rand(2, 5, 4) * 0.3 + 0.3
    conf, _ = detection_scores(logits, False)
    m = match_to_teacher(logits, boxes, logits, boxes, False)
    assert float(class_kd_loss(logits, logits, m, 2.0, False)) == pytest.approx(0.0, abs=1e-6)
    assert float(box_kd_loss(boxes, boxes, conf, m, 0.0)) == pytest.approx(0.0, abs=1e-6)


def test_mismatched_class_outputs_are_refused() -> None:
    with pytest.raises(ValueError, match="teacher_label_indices"):
        match_to_teacher(
            torch.randn(1, 2, 3), torch.rand(1, 2, 4), torch.randn(1, 2, 5), torch.rand(1, 2, 4), True
        )


def test_token_kd_is_the_projector_loss_on_matched_query_states() -> None:
    from torch import nn

    from hf_dtokd.losses.detection import query_states, query_token_kd_loss
    from hf_dtokd.signals.projectors import build_projector

    torch.manual_seed(4)
    student_states, teacher_states = torch.randn(2, 5, 6), torch.randn(2, 3, 8)
    matches = [(torch.tensor([4, 0, 2]), torch.tensor([0, 2, 1])), (torch.tensor([1]), torch.tensor([2]))]
    projector = build_projector("linear", 6, 8)
    loss = query_token_kd_loss(projector, student_states, teacher_states, matches)
    weight, bias = projector.proj.weight[:, :, 0, 0], projector.proj.bias
    pairs = [(0, 4, 0), (0, 0, 2), (0, 2, 1), (1, 1, 2)]
    squared = [
        ((weight @ student_states[b, i] + bias - teacher_states[b, j]) ** 2).mean() for b, i, j in pairs
    ]
    assert float(loss) == pytest.approx(float(torch.stack(squared).mean()), rel=1e-5)
    empty = query_token_kd_loss(
        projector, student_states, teacher_states, [(torch.tensor([], dtype=torch.long),) * 2] * 2
    )
    assert float(empty) == 0.0
    # the matching queries' states are the last ones (RT-DETR's denoising queries, YOLOS's patches come first)
    states = torch.arange(2 * 7 * 3, dtype=torch.float32).reshape(2, 7, 3)
    assert torch.equal(query_states({"last_hidden_state": states}, 4), states[:, 3:])
    with pytest.raises(ValueError, match="last_hidden_state"):
        query_states({"logits": states}, 4)
    assert isinstance(projector, nn.Module)
