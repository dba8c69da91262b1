"""DeiT token losses against values written out by hand on small tensors."""

import math

import pytest
import torch

from hf_dtokd.losses import deit_token_losses, hard_distillation_loss


def test_hard_distillation_is_cross_entropy_on_the_teachers_top_class():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    teacher = torch.tensor([[0.1, 3.0, 0.0], [5.0, 0.0, 1.0]])  # top classes 1 and 0
    first = -(0.0 - math.log(math.exp(2.0) + math.exp(0.0) + math.exp(-1.0)))
    second = -(0.0 - math.log(math.exp(0.0) + math.exp(1.0) + math.exp(0.0)))
    assert hard_distillation_loss(student, teacher).item() == pytest.approx((first + second) / 2, rel=1e-6)


def test_soft_and_hard_token_losses_use_the_right_heads():
    cls = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    dist = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    teacher = torch.tensor([[2.0, 0.0], [0.0, 0.5]])
    labels = torch.tensor([0, 1])

    def ce(row, target):  # -log softmax(row)[target], from the definition
        return -(row[target] - math.log(sum(math.exp(v) for v in row)))

    task = (ce(cls[0].tolist(), 0) + ce(cls[1].tolist(), 1)) / 2
    t = 2.0
    p_t, log_p_s = torch.softmax(teacher / t, -1), torch.log_softmax(dist / t, -1)
    soft = t**2 * (p_t * (p_t.log() - log_p_s)).sum(-1).mean().item()
    hard = (ce(dist[0].tolist(), 0) + ce(dist[1].tolist(), 1)) / 2  # the teacher's top classes: 0, 1
    got_soft = deit_token_losses(cls, dist, teacher, labels, "soft", temperature=t)
    got_hard = deit_token_losses(cls, dist, teacher, labels, "hard")
    assert got_soft.tolist() == pytest.approx([soft, task], rel=1e-6)
    assert got_hard.tolist() == pytest.approx([hard, task], rel=1e-6)
    with pytest.raises(ValueError, match="valid values: soft, hard"):
        deit_token_losses(cls, dist, teacher, labels, "medium")
    with pytest.raises(ValueError, match="differ in shape"):
        hard_distillation_loss(dist, teacher[:, :1])
