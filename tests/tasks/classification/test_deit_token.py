"""DeiTTokenTrainer: the two-head DeiT student trained with its distillation token, balanced by DTO-KD."""

import copy

import pytest
import torch
from transformers import AutoModelForImageClassification

from hf_dtokd import DeiTTokenTrainer
from testing_utils import (
    EPS,
    GradRecorder,
    dto_weights,
    flat_params,
    random_images,
    tiny_args,
    tiny_resnet,
    tiny_vit,
    train_logs,
    two_head_deit,
    whole_batch,
)


def flat_grads(loss, params):
    """Every parameter's gradient, zero where the loss does not reach it (each head is one loss's only)."""
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])


def head_losses(student, teacher, x, y, distillation):
    out = student(pixel_values=x)
    with torch.no_grad():
        z_t = teacher(pixel_values=x).logits
    task = torch.nn.functional.cross_entropy(out.cls_logits, y)
    if distillation == "hard":
        distill = torch.nn.functional.cross_entropy(out.distillation_logits, z_t.argmax(-1))
    else:
        p_t = torch.softmax(z_t / 2.0, -1)
        distill = (
            4.0 * (p_t * (p_t.log() - torch.log_softmax(out.distillation_logits / 2.0, -1))).sum(-1).mean()
        )
    return distill, task


@pytest.mark.parametrize("distillation", ["hard", "soft"])
def test_exact_dto_on_the_two_heads_equals_an_independent_computation(tmp_path, distillation):
    student, teacher = two_head_deit(), tiny_resnet()
    reference, before = copy.deepcopy(student), flat_params(student).clone()
    recorder = GradRecorder()
    data = random_images(16)
    trainer = DeiTTokenTrainer(
        model=student,
        teacher_model=teacher,
        args=tiny_args(tmp_path, temperature=2.0),
        train_dataset=data,
        callbacks=[recorder],
        distillation=distillation,
    )
    trainer.train()
    x, y = whole_batch(data)
    distill, task = head_losses(reference, teacher, x, y, distillation)
    params = list(reference.parameters())
    g_d, g_t = flat_grads(distill, params), flat_grads(task, params)
    pi, w = dto_weights(g_d, g_t, distill.item() + EPS, task.item() + EPS)
    assert train_logs(trainer, "pi_distill")[0] == pytest.approx(pi, abs=1e-5)
    assert torch.allclose(recorder.grads[0], w[0] * g_d + w[1] * g_t, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(flat_params(trainer.model), before)


def test_the_saved_student_reloads_with_the_auto_class_and_predicts_the_mean_of_its_heads(tmp_path):
    trainer = DeiTTokenTrainer(
        model=two_head_deit(),
        teacher_model=tiny_resnet(),
        train_dataset=random_images(16),
        args=tiny_args(tmp_path, method="fixed"),
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "student"))
    reloaded = AutoModelForImageClassification.from_pretrained(str(tmp_path / "student"))
    assert type(reloaded).__name__ == "DeiTForImageClassificationWithTeacher"
    x, _ = whole_batch(random_images(4))
    with torch.no_grad():
        out, original = reloaded(pixel_values=x), trainer.model(pixel_values=x)
    assert torch.allclose(out.logits, (out.cls_logits + out.distillation_logits) / 2)
    assert torch.allclose(out.logits, original.logits, atol=1e-6)
    assert not any(key.startswith(("teacher", "resnet")) for key in reloaded.state_dict())
    metrics = trainer.evaluate(
        random_images(8)
    )  # the two-head forward takes no labels: they reach the metrics
    assert 0.0 <= metrics["eval_top1"] <= 1.0 and "eval_loss" in metrics


def test_representation_auto_is_the_last_blocks_input_and_the_final_norm_is_refused(tmp_path):
    data = random_images(16)
    student, teacher = two_head_deit(layers=2), tiny_resnet()
    reference = copy.deepcopy(student)
    trainer = DeiTTokenTrainer(
        model=student,
        teacher_model=teacher,
        train_dataset=data,
        args=tiny_args(tmp_path, gradient_placement="representation"),
    )
    assert trainer.placement.layer == "deit.layers.0"
    trainer.train()
    captured = {}
    reference.deit.layers[0].register_forward_hook(
        lambda m, i, o: captured.update(z=o[0] if isinstance(o, tuple) else o)
    )
    x, y = whole_batch(data)
    distill, task = head_losses(reference, teacher, x, y, "hard")
    a_d, a_t = (
        torch.autograd.grad(loss, captured["z"], retain_graph=True)[0].reshape(-1) for loss in (distill, task)
    )
    pi, _ = dto_weights(a_d, a_t, distill.item() + EPS, task.item() + EPS)
    assert train_logs(trainer, "pi_distill")[0] == pytest.approx(pi, abs=1e-5)

    # after the last attention the two heads read different tokens: no shared coordinate, refused
    with pytest.raises(ValueError, match="touch disjoint coordinates"):
        DeiTTokenTrainer(
            model=two_head_deit(),
            teacher_model=tiny_resnet(),
            train_dataset=data,
            args=tiny_args(
                tmp_path / "norm", gradient_placement="representation", representation_layer="deit.layernorm"
            ),
        ).train()


def test_a_one_head_student_and_an_unknown_mode_are_refused(tmp_path):
    with pytest.raises(ValueError, match="needs a two-head DeiT student .* got ViTForImageClassification"):
        DeiTTokenTrainer(model=tiny_vit(), teacher_model=tiny_resnet(), args=tiny_args(tmp_path))
    with pytest.raises(ValueError, match="valid values: soft, hard"):
        DeiTTokenTrainer(
            model=two_head_deit(), teacher_model=tiny_resnet(), args=tiny_args(tmp_path), distillation="both"
        )


def test_dot_treats_each_head_as_a_one_loss_parameter_like_the_authors_code(tmp_path):
    """20 DOT steps: the class head (task only) and the distillation head (distillation only) take the mean
    momentum and their own weight decay, as in the DOT authors' optimizer fed two separate backwards."""
    from dot_reference import check_trainer_against_the_rule

    student, teacher, data = two_head_deit(), tiny_resnet(), random_images(16)
    reference = copy.deepcopy(student)
    args = tiny_args(
        tmp_path,
        method="dot",
        alpha=0.6,
        max_steps=20,
        learning_rate=0.005,
        weight_decay=0.05,
        logging_steps=20,
    )
    trainer = DeiTTokenTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=data, distillation="hard"
    )
    trainer.train()
    x, y = whole_batch(data)
    # the tokens grow to a few hundred in 20 steps: float32 agreement there is relative (1e-6 is ~8 ulps)
    check_trainer_against_the_rule(
        trainer,
        reference,
        lambda: head_losses(reference, teacher, x, y, "hard"),
        20,
        "distillation_classifier",
        rtol=1e-6,
    )
