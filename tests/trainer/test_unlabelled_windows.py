"""A window with no labelled example: balanced methods train it on the distillation loss alone, and log it."""

import copy

import pytest
import torch
from datasets import Value

from hf_dtokd import DTOKDTrainer
from testing_utils import (
    GradRecorder,
    random_images,
    tiny_args,
    tiny_resnet,
    tiny_vit,
    train_logs,
    whole_batch,
)

TEMPERATURE = 2.0


def unlabelled(n=16, seed=0):
    data = random_images(n, seed=seed).cast_column("labels", Value("int64"))
    return data.map(lambda row: {"labels": -100})


def reference_distill_gradient(student, teacher, x):
    """grad of T^2 KL(p_t || p_s), written out from the definition on a copy of the student."""
    student = copy.deepcopy(student)
    z_s = student(pixel_values=x).logits
    with torch.no_grad():
        p_t = torch.softmax(teacher(pixel_values=x).logits / TEMPERATURE, dim=-1)
    log_p_s = torch.log_softmax(z_s / TEMPERATURE, dim=-1)
    loss = TEMPERATURE**2 * (p_t * (p_t.log() - log_p_s)).sum(dim=-1).mean()
    grads = torch.autograd.grad(loss, list(student.parameters()))
    return torch.cat([g.reshape(-1) for g in grads])


BALANCED = [
    ("dto", {}),
    ("dto", {"gradient_placement": "representation"}),
    ("dto_amortized", {}),
    ("dto_amortized", {"look_ahead": "next_batch"}),
    ("upgrad", {"log_gradients": True}),
    ("uncertainty", {}),
]


@pytest.mark.parametrize(("method", "options"), BALANCED)
def test_an_unlabelled_window_is_trained_on_the_distillation_loss_alone(tmp_path, method, options):
    data = unlabelled()
    student, teacher = tiny_vit(), tiny_resnet()
    x, _ = whole_batch(data)
    expected = reference_distill_gradient(student, teacher.eval(), x)
    recorder = GradRecorder()
    args = tiny_args(tmp_path, method=method, temperature=TEMPERATURE, max_steps=1, **options)
    trainer = DTOKDTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=data, callbacks=[recorder]
    )
    state_before = copy.deepcopy(trainer.balancer.state_dict())
    trainer.train()
    (applied,) = recorder.grads
    assert torch.count_nonzero(expected) > 0
    torch.testing.assert_close(applied, expected, rtol=1e-5, atol=1e-7)
    assert train_logs(trainer, "weight_distill") == [1.0] and train_logs(trainer, "weight_task") == [0.0]
    assert train_logs(trainer, "distillation_only_windows") == [1]
    state_after = trainer.balancer.state_dict()
    for key, value in state_before.items():  # the trade-off learnt nothing from a zero task loss
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, state_after[key]), key


def test_exact_dto_no_longer_puts_its_weight_on_the_zero_task_gradient(tmp_path):
    """Two windows of 8, one holding the only labelled row: the other window's update is the distillation
    gradient (before, pi went to the zero task gradient and the update was 0)."""
    data = random_images(16).cast_column("labels", Value("int64"))
    data = data.map(lambda row, i: {"labels": row["labels"] if i == 5 else -100}, with_indices=True)
    recorder = GradRecorder()
    args = tiny_args(tmp_path, max_steps=2, per_device_train_batch_size=8, temperature=TEMPERATURE)
    trainer = DTOKDTrainer(
        model=tiny_vit(), teacher_model=tiny_resnet(), args=args, train_dataset=data, callbacks=[recorder]
    )
    trainer.train()
    task = train_logs(trainer, "task_loss")
    empty = task.index(0.0)
    assert task[1 - empty] > 0.0
    assert torch.count_nonzero(recorder.grads[empty]) > 0
    assert train_logs(trainer, "weight_distill")[empty] == 1.0
    assert train_logs(trainer, "distillation_only_windows")[-1] == 1


def test_fixed_alpha_keeps_its_weights_on_an_unlabelled_window(tmp_path):
    args = tiny_args(tmp_path, method="fixed", alpha=0.3, max_steps=1, temperature=TEMPERATURE)
    trainer = DTOKDTrainer(
        model=tiny_vit(), teacher_model=tiny_resnet(), args=args, train_dataset=unlabelled()
    )
    trainer.train()
    assert train_logs(trainer, "weight_distill") == [pytest.approx(0.3)]
    assert train_logs(trainer, "distillation_only_windows") == [0]
