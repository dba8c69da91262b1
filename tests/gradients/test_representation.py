"""The cheap gradient paths: representation placement, batched per-loss gradients, next-batch look-ahead."""

import copy

import pytest
import torch
from torchjd.aggregation import UPGradWeighting
from transformers import TrainerCallback

from hf_dtokd import ClassificationTask, DTOKDTrainer
from hf_dtokd.losses import logit_kd_loss, task_cross_entropy
from testing_utils import (
    GradRecorder,
    ThreeObjectives,
    conflicting_pair,
    dto_weights,
    flat_grads,
    flat_params,
    random_images,
    reference_losses,
    tiny_args,
    train_logs,
    trainer_with,
    whole_batch,
)

EPS = 1e-8


def train(tmp_path, trainer_class=DTOKDTrainer, data=None, callbacks=(), **overrides):
    data = data if data is not None else random_images(16)
    student, teacher = conflicting_pair()
    reference = copy.deepcopy(student)
    args = tiny_args(tmp_path, temperature=2.0, **overrides)
    trainer = trainer_class(
        model=student, teacher_model=teacher, args=args, train_dataset=data, callbacks=list(callbacks)
    )
    trainer.train()
    return trainer, reference, teacher, data


def test_representation_at_the_logits_pi_from_the_logit_gram_and_the_exact_parameter_combination(tmp_path):
    recorder = GradRecorder()
    trainer, reference, teacher, data = train(
        tmp_path, method="dto", gradient_placement="representation", callbacks=[recorder]
    )
    assert trainer.placement.layer == "logits"
    x, y = whole_batch(data)
    z_s = reference(pixel_values=x).logits
    with torch.no_grad():
        z_t = teacher(pixel_values=x).logits
    p_t = torch.softmax(z_t / 2.0, dim=-1)
    distill = 4.0 * (p_t * (p_t.log() - torch.log_softmax(z_s / 2.0, dim=-1))).sum(-1).mean()
    task = -torch.log_softmax(z_s, dim=-1)[torch.arange(len(y)), y].mean()
    a_d = torch.autograd.grad(distill, z_s, retain_graph=True)[0].reshape(-1)
    a_t = torch.autograd.grad(task, z_s, retain_graph=True)[0].reshape(-1)
    pi, w = dto_weights(a_d, a_t, distill.item() + EPS, task.item() + EPS)
    assert 0.0 < pi < 1.0
    assert train_logs(trainer, "pi_distill")[0] == pytest.approx(pi, abs=1e-5)
    assert train_logs(trainer, "grad_cos")[0] == pytest.approx(
        (a_d @ a_t / (a_d.norm() * a_t.norm())).item(), abs=1e-5
    )
    # one backward of the balanced loss = the exact combination of the per-loss parameter gradients
    params = list(reference.parameters())
    expected = w[0] * flat_grads(distill, params) + w[1] * flat_grads(task, params)
    assert torch.allclose(recorder.grads[0], expected, rtol=1e-4, atol=1e-7)
    # and it is not the parameter placement's pi (the Jacobian below the logits is not orthogonal)
    parameter_pi, _ = dto_weights(
        flat_grads(distill, params), flat_grads(task, params), distill.item() + EPS, task.item() + EPS
    )
    assert abs(parameter_pi - pi) > 1e-3


class FromTheLayerNormTask(ClassificationTask):
    losses_from_logits = False  # "auto" then takes the family's last shared layer


FromTheLayerNorm = trainer_with(FromTheLayerNormTask)


def layernorm_gradients(reference, teacher, x, y):
    captured = {}
    handle = reference.vit.layernorm.register_forward_hook(lambda m, i, o: captured.update(z=o))
    distill, task = reference_losses(reference, teacher, x, y, 2.0)
    handle.remove()
    z = captured["z"]
    a_d = torch.autograd.grad(distill, z, retain_graph=True)[0].reshape(-1)
    a_t = torch.autograd.grad(task, z, retain_graph=True)[0].reshape(-1)
    return distill, task, a_d, a_t


@pytest.mark.parametrize("layer", ["auto", "vit.layernorm"])
def test_representation_at_a_module_uses_the_gram_at_that_module(tmp_path, layer):
    recorder = GradRecorder()
    trainer_class = FromTheLayerNorm if layer == "auto" else DTOKDTrainer
    trainer, reference, teacher, data = train(
        tmp_path,
        trainer_class,
        method="dto",
        callbacks=[recorder],
        gradient_placement="representation",
        representation_layer=layer,
    )
    assert trainer.placement.layer == "vit.layernorm"
    x, y = whole_batch(data)
    distill, task, a_d, a_t = layernorm_gradients(reference, teacher, x, y)
    pi, w = dto_weights(a_d, a_t, distill.item() + EPS, task.item() + EPS)
    assert train_logs(trainer, "pi_distill")[0] == pytest.approx(pi, abs=1e-5)
    params = list(reference.parameters())
    expected = w[0] * flat_grads(distill, params) + w[1] * flat_grads(task, params)
    assert torch.allclose(recorder.grads[0], expected, rtol=1e-4, atol=1e-7)


def test_a_torchjd_method_at_the_representation_applies_torchjds_weights(tmp_path):
    recorder = GradRecorder()
    trainer, reference, teacher, data = train(
        tmp_path, method="upgrad", gradient_placement="representation", callbacks=[recorder]
    )
    x, y = whole_batch(data)
    z_s = reference(pixel_values=x).logits
    distill, task = (
        logit_kd_loss(z_s, teacher(pixel_values=x).logits.detach(), 2.0),
        task_cross_entropy(z_s, y, 0.0),
    )
    a = torch.stack(
        [torch.autograd.grad(loss, z_s, retain_graph=True)[0].reshape(-1) for loss in (distill, task)]
    )
    p = UPGradWeighting()((a @ a.T).double()).float()
    params = list(reference.parameters())
    expected = p[0] * flat_grads(distill, params) + p[1] * flat_grads(task, params)
    assert torch.allclose(recorder.grads[0], expected, rtol=1e-4, atol=1e-7)


class MicroBatches(TrainerCallback):
    """Records the pixels of every micro-batch the trainer sees (to rebuild its split of the window)."""

    def __init__(self):
        self.pixels = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model.register_forward_hook(
            lambda m, a, kw, out: self.pixels.append(kw["pixel_values"]), with_kwargs=True
        )


def test_representation_with_accumulation_sets_pi_per_micro_batch(tmp_path):
    seen = MicroBatches()
    trainer, reference, teacher, data = train(
        tmp_path,
        method="dto",
        gradient_placement="representation",
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        learning_rate=0.1,
        callbacks=[seen],
    )
    x, y = whole_batch(data)
    params = list(reference.parameters())
    total, pis = torch.zeros_like(flat_params(reference)), []
    assert len(seen.pixels) == 2
    for pixels in seen.pixels:
        half = [next(i for i in range(len(x)) if torch.equal(x[i], row)) for row in pixels]
        z_s = reference(pixel_values=x[half]).logits
        distill, task = (
            logit_kd_loss(z_s, teacher(pixel_values=x[half]).logits.detach(), 2.0),
            task_cross_entropy(z_s, y[half], 0.0),
        )
        a_d, a_t = (
            torch.autograd.grad(loss, z_s, retain_graph=True)[0].reshape(-1) for loss in (distill, task)
        )
        pi, w = dto_weights(a_d, a_t, distill.item() + EPS, task.item() + EPS)
        pis.append(pi)
        total += (w[0] * flat_grads(distill, params) + w[1] * flat_grads(task, params)) / 2
    assert train_logs(trainer, "pi_distill")[0] == pytest.approx(sum(pis) / 2, abs=1e-5)
    assert torch.allclose(flat_params(trainer.model), flat_params(reference) - 0.1 * total, atol=1e-6)


class DisjointHeadsTask(ClassificationTask):
    """Distillation on the first two logits, the task on the last two: disjoint coordinates of the logits."""

    def compute_objective_losses(self, student_logits, teacher_logits, labels):
        distill = logit_kd_loss(student_logits[:, :2], teacher_logits[:, :2], self.args.temperature)
        task = task_cross_entropy(student_logits[:, 2:], labels % 2, 0.0)
        return torch.stack([distill, task])


DisjointHeads = trainer_with(DisjointHeadsTask)


def test_a_layer_where_the_losses_touch_disjoint_coordinates_is_refused(tmp_path):
    with pytest.raises(ValueError, match="touch disjoint coordinates"):
        train(tmp_path, DisjointHeads, method="dto", gradient_placement="representation")


def test_bad_representation_layers_are_named(tmp_path):
    with pytest.raises(
        ValueError, match="'vit.nope' is not a module of the student ViTForImageClassification"
    ):
        train(tmp_path, method="dto", gradient_placement="representation", representation_layer="vit.nope")

    class FrozenPatches(DTOKDTrainer):
        def __init__(self, model, **kwargs):
            model.vit.embeddings.requires_grad_(False)
            super().__init__(model=model, **kwargs)

    with pytest.raises(ValueError, match="produced no tensor that requires grad"):
        train(
            tmp_path,
            FrozenPatches,
            method="dto",
            gradient_placement="representation",
            representation_layer="vit.embeddings.patch_embeddings",
        )


def test_representation_placement_refuses_a_custom_non_gram_balancer(tmp_path):
    from hf_dtokd.balancing import DOT

    student, teacher = conflicting_pair()
    with pytest.raises(ValueError, match="needs a Gram method"):
        DTOKDTrainer(
            model=student,
            teacher_model=teacher,
            balancer=DOT(),
            args=tiny_args(tmp_path, gradient_placement="representation"),
        )


def test_batched_gradients_give_the_same_three_objective_steps_with_accumulation(tmp_path):
    runs = {}
    for batched in (False, True):
        trainer, *_ = train(
            tmp_path / str(batched),
            ThreeObjectives,
            method="dto",
            batched_gradients=batched,
            max_steps=2,
            per_device_train_batch_size=8,
            gradient_accumulation_steps=2,
        )
        runs[batched] = (train_logs(trainer, "pi_distill"), flat_params(trainer.model))
        if batched:
            assert not trainer.placement.gradients.batched_unsupported
    assert runs[True][0] == pytest.approx(runs[False][0], abs=1e-6)
    assert torch.allclose(runs[True][1], runs[False][1], atol=1e-6)


def test_batched_gradients_need_three_objectives(tmp_path):
    student, teacher = conflicting_pair()
    with pytest.raises(ValueError, match="nothing to batch"):
        DTOKDTrainer(model=student, teacher_model=teacher, args=tiny_args(tmp_path, batched_gradients=True))


class CountForwards:
    def __init__(self, model):
        self.calls = 0
        model.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))


def test_next_batch_look_ahead_updates_from_the_next_windows_losses_without_a_forward(tmp_path):
    student, teacher = conflicting_pair()
    counter = CountForwards(student)
    args = tiny_args(
        tmp_path,
        method="dto_amortized",
        look_ahead="next_batch",
        max_steps=3,
        per_device_train_batch_size=8,
        temperature=2.0,
    )
    trainer = DTOKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=random_images(16))
    trainer.train()
    assert counter.calls == 3  # one training forward per step, no look-ahead forward
    distill, task = train_logs(trainer, "distill_loss"), train_logs(trainer, "task_loss")
    pi = train_logs(trainer, "pi_distill")
    assert pi[:2] == [pytest.approx(0.5), pytest.approx(0.5)]  # no update before the second window closes
    # the first update, at step 2: delta = log L(step 1 batch, before) - log L(step 2 batch, after)
    delta = torch.log(torch.tensor([distill[0], task[0]]) + EPS) - torch.log(
        torch.tensor([distill[1], task[1]]) + EPS
    )
    xi_grad = 0.5 * (delta - 0.5 * delta.sum())
    assert pi[2] == pytest.approx(torch.softmax(-0.025 * torch.sign(xi_grad), 0)[0].item(), abs=1e-4)
