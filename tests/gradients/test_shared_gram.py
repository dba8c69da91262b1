"""gram_parameters='shared' and the one-loss rule, on a model with a shared trunk, a task-only head and a
distillation-only head (the two-head DeiT: its class head reads the task loss, its distillation head the
distillation loss), against an independent computation."""

import copy

import pytest
import torch

from hf_dtokd import DeiTTokenTrainer, DTOKDConfig
from testing_utils import (
    EPS,
    GradRecorder,
    dto_weights,
    random_images,
    tiny_args,
    tiny_resnet,
    train_logs,
    two_head_deit,
    whole_batch,
)

HEADS = {"cls_classifier": "task", "distillation_classifier": "distill"}


def head_of(name: str) -> str | None:
    return next((loss for head, loss in HEADS.items() if name.startswith(head + ".")), None)


def per_loss_gradients(student, teacher, x, y):
    """Soft distillation at T = 2 on the distillation head, cross-entropy on the class head, written out."""
    out = student(pixel_values=x)
    with torch.no_grad():
        p_t = torch.softmax(teacher(pixel_values=x).logits / 2.0, -1)
    distill = 4.0 * (p_t * (p_t.log() - torch.log_softmax(out.distillation_logits / 2.0, -1))).sum(-1).mean()
    task = torch.nn.functional.cross_entropy(out.cls_logits, y)
    named = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    params = [p for _, p in named]

    def grads(loss):
        found = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for g, p in zip(found, params)]

    return distill.item(), task.item(), [n for n, _ in named], grads(distill), grads(task)


def student_with_frozen_embeddings():
    """The two-head DeiT trained at its last block's MLP, final norm and heads only: on random pixels the token
    embeddings' gradients are ~1e4 times the heads' and would hide them; the trunk left is still shared."""
    student = two_head_deit()
    student.requires_grad_(False)
    for module in (student.deit.layers[-1].mlp, student.deit.layernorm, student.cls_classifier):
        module.requires_grad_(True)
    student.distillation_classifier.requires_grad_(True)
    return student


def confident_teacher():
    """A teacher whose logits are scaled up 20 times: its targets disagree with the labels enough that pi lies
    inside (0, 1) both over the trunk (0.14) and over every parameter (0.21)."""
    teacher = tiny_resnet(seed=1)
    with torch.no_grad():
        teacher.classifier[-1].weight.mul_(20.0)
        teacher.classifier[-1].bias.mul_(20.0)
    return teacher


class TrainableGradRecorder(GradRecorder):
    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append(
            torch.cat([p.grad.detach().reshape(-1).clone() for p in model.parameters() if p.requires_grad])
        )


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


@pytest.mark.parametrize("rule", ["weighted", "own"])
def test_pi_over_the_shared_trunk_and_each_heads_update(tmp_path, rule):
    student, teacher = student_with_frozen_embeddings(), confident_teacher()
    reference = copy.deepcopy(student)
    data = random_images(16)
    recorder = TrainableGradRecorder()
    args = tiny_args(tmp_path, temperature=2.0, gram_parameters="shared", one_loss_parameters=rule)
    trainer = DeiTTokenTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=data,
        callbacks=[recorder],
        distillation="soft",
    )
    trainer.train()

    x, y = whole_batch(data)
    l_d, l_t, names, g_d, g_t = per_loss_gradients(reference, teacher, x, y)
    trunk = [head_of(n) is None for n in names]
    assert sum(trunk) < len(names)  # the heads are left out
    pi, w = dto_weights(
        flat(g for g, t in zip(g_d, trunk) if t),
        flat(g for g, t in zip(g_t, trunk) if t),
        l_d + EPS,
        l_t + EPS,
    )
    assert 0.0 < pi < 1.0
    assert train_logs(trainer, "pi_distill")[0] == pytest.approx(pi, abs=1e-5)

    expected = []
    for name, gd, gt in zip(names, g_d, g_t):
        head = head_of(name)
        if head is None:
            expected.append(w[0] * gd + w[1] * gt)
        elif head == "task":
            expected.append(gt if rule == "own" else w[1] * gt)
        else:
            expected.append(gd if rule == "own" else w[0] * gd)
    torch.testing.assert_close(recorder.grads[0], flat(expected), rtol=1e-4, atol=1e-7)


def test_the_shared_gram_differs_from_the_gram_over_every_parameter(tmp_path):
    """Over every parameter the two heads lengthen each log-gradient with coordinates the other loss never
    reaches: pi moves (the case of detection's task-only heads)."""
    pis = {}
    for gram in ("all", "shared"):
        args = tiny_args(tmp_path / gram, temperature=2.0, gram_parameters=gram)
        trainer = DeiTTokenTrainer(
            model=student_with_frozen_embeddings(), teacher_model=confident_teacher(), args=args,
            train_dataset=random_images(16),
            distillation="soft",
        )  # fmt: skip
        trainer.train()
        pis[gram] = train_logs(trainer, "pi_distill")[0]
    assert abs(pis["all"] - pis["shared"]) > 1e-2, pis


def test_one_loss_parameters_is_checked(tmp_path):
    with pytest.raises(ValueError, match="unknown one_loss_parameters 'mine'; valid values: weighted, own"):
        DTOKDConfig(output_dir=str(tmp_path), one_loss_parameters="mine")
    with pytest.raises(ValueError, match="one_loss_parameters='own' applies to the Gram methods"):
        DTOKDConfig(output_dir=str(tmp_path), method="fixed", one_loss_parameters="own")
    with pytest.raises(ValueError, match="gram_parameters='shared' applies to the Gram methods"):
        DTOKDConfig(output_dir=str(tmp_path), method="dto_amortized", gram_parameters="shared")
