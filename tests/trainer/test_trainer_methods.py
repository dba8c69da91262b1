"""Every trade-off method inside DTOKDTrainer: the update it applies against independent computations."""

import copy

import numpy as np
import pytest
import torch
from torchjd.aggregation import (
    AlignedMTLWeighting,
    CAGradWeighting,
    DualProjWeighting,
    IMTLGWeighting,
    MGDAWeighting,
    PCGradWeighting,
    UPGradWeighting,
)

from hf_dtokd import ClassificationTask, DTOKDConfig, DTOKDTrainer
from hf_dtokd.balancing import FixedWeights, UncertaintyWeighting
from testing_utils import (
    GradRecorder,
    ThreeObjectives,
    conflicting_pair,
    flat_grads,
    flat_params,
    random_images,
    reference_losses,
    tiny_args,
    tiny_resnet,
    tiny_vit,
    train_logs,
    trainer_with,
    whole_batch,
)

EPS = 1e-8
TORCHJD = {
    "mgda": (MGDAWeighting(), 1.0),
    "pcgrad": (PCGradWeighting(), 0.5),
    "cagrad": (CAGradWeighting(c=0.4), 1.0),
    "upgrad": (UPGradWeighting(), 1.0),
    "imtl_g": (IMTLGWeighting(), 1.0),
    "aligned_mtl": (AlignedMTLWeighting(), 1.0),
    "dualproj": (DualProjWeighting(), 1.0),
}


def one_step(tmp_path, method, **overrides):
    data = random_images(16)
    student, teacher = conflicting_pair()
    reference = copy.deepcopy(student)
    recorder = GradRecorder()
    args = tiny_args(tmp_path, method=method, temperature=2.0, **overrides)
    trainer = DTOKDTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=data, callbacks=[recorder]
    )
    trainer.train()
    x, y = whole_batch(data)
    distill, task = reference_losses(reference, teacher, x, y, 2.0)
    params = list(reference.parameters())
    grads = torch.stack([flat_grads(distill, params), flat_grads(task, params)]).double()
    losses = torch.tensor([distill.item(), task.item()], dtype=torch.float64)
    return trainer, recorder.grads[0].double(), grads, losses


@pytest.mark.parametrize("method", list(TORCHJD))
@pytest.mark.parametrize("log_gradients", [False, True])
def test_torchjd_methods_apply_torchjd_weights_of_the_independent_gram(tmp_path, method, log_gradients):
    trainer, applied, grads, losses = one_step(tmp_path, method, log_gradients=log_gradients)
    weighting, scale = TORCHJD[method]
    shifted = losses + EPS
    vectors = grads / shifted[:, None] if log_gradients else grads
    p = scale * weighting(vectors @ vectors.T).double()
    weights = p
    if log_gradients:
        weights = p / shifted
        weights = weights * p.sum() / weights.sum()
    assert torch.allclose(applied, weights @ grads, rtol=2e-4, atol=1e-7)
    assert train_logs(trainer, "pi_distill")[0] == pytest.approx(float(p[0] / p.sum()), abs=1e-4)
    assert train_logs(trainer, "grad_cos")[0] < 0  # the fixture conflicts: the methods have work to do


def test_uncertainty_applies_half_weights_then_learns_from_the_window_losses(tmp_path):
    trainer, applied, grads, losses = one_step(tmp_path, "uncertainty")
    assert torch.allclose(applied, 0.5 * grads.sum(0), rtol=1e-4, atol=1e-7)
    expected = UncertaintyWeighting(lr=0.025, weight_decay=0.01)
    expected.observe_window(losses.float())
    assert torch.allclose(trainer.balancer.log_variance.detach(), expected.log_variance.detach(), atol=1e-6)


def simplex_grid(step=0.002):
    values = np.arange(0.0, 1.0 + step / 2, step)
    a, b = np.meshgrid(values, values, indexing="ij")
    keep = a + b <= 1.0 + 1e-12
    return np.stack([a[keep], b[keep], np.clip(1.0 - a[keep] - b[keep], 0.0, None)], axis=1)


def test_three_objectives_exact_dto_is_the_min_norm_point_and_applies_its_gradient(tmp_path):
    data = random_images(16)
    student, teacher = conflicting_pair()
    reference = copy.deepcopy(student)
    recorder = GradRecorder()
    trainer = ThreeObjectives(
        model=student,
        teacher_model=teacher,
        train_dataset=data,
        callbacks=[recorder],
        args=tiny_args(tmp_path, method="dto", temperature=2.0),
    )
    trainer.train()
    x, y = whole_batch(data)
    params = list(reference.parameters())
    z_s = reference(pixel_values=x).logits
    with torch.no_grad():
        z_t = teacher(pixel_values=x).logits
    distill, task = reference_losses(reference, teacher, x, y, 2.0)
    p_t = torch.softmax(z_t, -1)
    distill_t1 = (p_t * (p_t.log() - torch.log_softmax(z_s, -1))).sum(-1).mean()
    losses = torch.tensor([distill.item(), distill_t1.item(), task.item()], dtype=torch.float64) + EPS
    grads = torch.stack([flat_grads(loss, params) for loss in (distill, distill_t1, task)]).double()
    log_grads = grads / losses[:, None]
    gram = (log_grads @ log_grads.T).numpy()

    pi = trainer.balancer.pi.double().numpy()
    grid = simplex_grid()
    grid_min = np.einsum("ni,ij,nj->n", grid, gram, grid).min()
    assert float(pi @ gram @ pi) <= grid_min + 1e-7 * np.trace(gram)
    weights = torch.from_numpy(pi) / losses
    weights = weights / weights.sum()
    assert torch.allclose(recorder.grads[0].double(), weights @ grads, rtol=2e-4, atol=1e-7)
    for key in (
        "pi_distill",
        "pi_distill_t1",
        "grad_cos_distill_t1",
        "grad_norm_ratio_distill_t1",
        "distill_t1_loss",
    ):
        assert len(train_logs(trainer, key)) == 1, key


def test_three_objectives_with_famo_and_fixed_weights(tmp_path):
    args = tiny_args(tmp_path, method="famo", max_steps=2)
    trainer = ThreeObjectives(
        model=tiny_vit(), teacher_model=tiny_resnet(), args=args, train_dataset=random_images(16)
    )
    trainer.train()
    assert trainer.balancer.xi.shape == (3,) and not torch.equal(trainer.balancer.xi.detach(), torch.zeros(3))
    fixed = ThreeObjectives(
        model=tiny_vit(),
        teacher_model=tiny_resnet(),
        args=tiny_args(tmp_path, method="fixed"),
        train_dataset=random_images(16),
        balancer=FixedWeights(weights=[0.3, 0.2, 0.5]),
    )
    fixed.train()
    assert train_logs(fixed, "pi_distill_t1") == [pytest.approx(0.2)]


def test_dot_two_steps_in_the_trainer_equal_the_reference_rule(tmp_path):
    data = random_images(16)
    student, teacher = conflicting_pair()
    reference = copy.deepcopy(student)
    args = tiny_args(
        tmp_path, method="dot", temperature=2.0, max_steps=2, alpha=0.9, weight_decay=0.01, learning_rate=0.05
    )
    trainer = DTOKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data)
    trainer.train()
    assert isinstance(
        trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer,
        torch.optim.SGD,
    )

    x, y = whole_batch(data)
    decay = set(trainer.get_decay_parameter_names(reference))
    named = list(reference.named_parameters())
    v_t = [torch.zeros_like(p) for _, p in named]
    v_d = [torch.zeros_like(p) for _, p in named]
    mu, delta = 0.9, 0.075
    for _ in range(2):  # 16 images, batch 16: both steps see the whole batch
        distill, task = reference_losses(reference, teacher, x, y, 2.0)
        params = [p for _, p in named]
        g_d = torch.autograd.grad(distill, params, retain_graph=True, allow_unused=True)
        g_t = torch.autograd.grad(task, params, allow_unused=True)
        with torch.no_grad():
            for j, (name, p) in enumerate(named):
                wd = 0.01 if name in decay else 0.0
                v_t[j] = (mu - delta) * v_t[j] + (0.1 * g_t[j] + wd * p)
                v_d[j] = (mu + delta) * v_d[j] + 0.9 * g_d[j]
                p -= 0.05 * (v_t[j] + v_d[j])
    assert torch.allclose(flat_params(trainer.model), flat_params(reference), atol=2e-6)


@pytest.mark.parametrize("method", ["dot", "upgrad", "uncertainty"])
def test_gradient_accumulation_matches_the_full_batch(tmp_path, method):
    data = random_images(16)
    runs = []
    for steps, batch in [(1, 16), (2, 8)]:
        student, teacher = conflicting_pair()
        args = tiny_args(
            tmp_path / f"ga{steps}",
            method=method,
            temperature=2.0,
            max_steps=3,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=steps,
        )
        trainer = DTOKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data)
        trainer.train()
        runs.append((train_logs(trainer, "loss"), flat_params(trainer.model)))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-5)
    assert torch.allclose(runs[0][1], runs[1][1], atol=1e-5)


@pytest.mark.parametrize("method", ["dot", "dot_adamw", "uncertainty", "pcgrad"])
def test_resume_from_a_checkpoint_continues_with_the_same_method_state(tmp_path, method):
    data = random_images(32)

    def trainer_for(folder, **overrides):
        args = tiny_args(
            folder,
            method=method,
            max_steps=4,
            per_device_train_batch_size=8,
            learning_rate=0.05,
            save_strategy="steps",
            save_steps=2,
            **overrides,
        )
        return DTOKDTrainer(
            model=tiny_resnet(seed=3), teacher_model=tiny_resnet(), args=args, train_dataset=data
        )

    straight = trainer_for(tmp_path / "straight")
    straight.train()
    resumed = trainer_for(tmp_path / "resumed")
    resumed.train()  # writes checkpoint-2 and checkpoint-4; resume from 2 in a fresh trainer
    again = trainer_for(tmp_path / "resumed")
    again.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-2"))
    assert torch.allclose(flat_params(again.model), flat_params(straight.model), atol=1e-6)
    state, expected = again.balancer.state_dict(), straight.balancer.state_dict()
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert torch.allclose(state[key].float(), value.float(), atol=1e-6), key


def test_method_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="method='fixed' weighs two objectives"):
        ThreeObjectives(
            model=tiny_vit(), teacher_model=tiny_resnet(), args=tiny_args(tmp_path, method="fixed")
        )
    with pytest.raises(ValueError, match="build it with num_objectives=3"):
        ThreeObjectives(
            model=tiny_vit(),
            teacher_model=tiny_resnet(),
            args=tiny_args(tmp_path),
            balancer=UncertaintyWeighting(num_objectives=2),
        )
    student = tiny_vit()
    with pytest.raises(ValueError, match="do not pass an optimizer"):
        DTOKDTrainer(
            model=student,
            teacher_model=tiny_resnet(),
            args=tiny_args(tmp_path, method="dot"),
            optimizers=(torch.optim.SGD(student.parameters(), lr=0.1), None),
        )

    class BadNames(ClassificationTask):
        objective_names = ("task", "distill")

    with pytest.raises(ValueError, match="ending with 'task'"):
        trainer_with(BadNames)(model=tiny_vit(), teacher_model=tiny_resnet(), args=tiny_args(tmp_path))


def test_missing_optional_dependency_names_the_extra(tmp_path, monkeypatch):
    import torchjd._mixins

    real = torchjd._mixins.find_spec
    monkeypatch.setattr(torchjd._mixins, "find_spec", lambda name: None if name == "cvxpy" else real(name))
    with pytest.raises(ImportError, match=r'pip install "hf-dtokd\[cagrad\]"'):
        DTOKDTrainer(
            model=tiny_vit(),
            teacher_model=tiny_resnet(),
            args=DTOKDConfig(output_dir=str(tmp_path), use_cpu=True, method="cagrad"),
        )


def test_objective_hooks_defined_on_a_trainer_subclass_are_refused_naming_the_task(tmp_path):
    class OldStyle(DTOKDTrainer):
        objective_names = ("distill", "distill_t1", "task")

        def compute_objective_losses(self, student_logits, teacher_logits, labels):
            raise AssertionError("never called")

    with pytest.raises(
        TypeError, match=r"OldStyle defines objective_names, compute_objective_losses on the trainer"
    ):
        OldStyle(model=tiny_vit(), teacher_model=tiny_resnet(), args=tiny_args(tmp_path))
