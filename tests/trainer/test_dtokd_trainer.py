"""DTOKDTrainer on real tiny models: the pi it uses, the gradient it applies, GA, the teacher, bad input."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForImageClassification, ViTImageProcessor

from hf_dtokd import DTOKDConfig, DTOKDTrainer
from testing_utils import (
    GradRecorder,
    conflicting_pair,
    family_students,
    flat_grads,
    flat_params,
    random_images,
    reference_losses,
    tiny_args,
    tiny_resnet,
    tiny_vit,
    train_logs,
    whole_batch,
)

EPS = 1e-8


def test_exact_pi_and_applied_gradient_equal_an_independent_computation(tmp_path):
    data = random_images(16)
    student, teacher = conflicting_pair()
    reference_student = copy.deepcopy(student)
    recorder = GradRecorder()
    trainer = DTOKDTrainer(
        model=student,
        teacher_model=teacher,
        args=tiny_args(tmp_path, method="dto", temperature=2.0),
        train_dataset=data,
        callbacks=[recorder],
    )
    trainer.train()

    x, y = whole_batch(data)
    params = list(reference_student.parameters())
    distill, task = reference_losses(reference_student, teacher, x, y, 2.0)
    g_d, g_t = flat_grads(distill, params), flat_grads(task, params)
    a_d, a_t = g_d / (distill.item() + EPS), g_t / (task.item() + EPS)
    g11, g12, g22 = (a_d @ a_d).item(), (a_d @ a_t).item(), (a_t @ a_t).item()
    pi_d = min(max((g22 - g12) / (g11 + g22 - 2 * g12), 0.0), 1.0)

    assert 0.0 < pi_d < 1.0, "the fixture must give conflicting gradients"
    assert train_logs(trainer, "pi_distill")[0] == pytest.approx(pi_d, abs=1e-5)
    assert float(trainer.balancer.pi[0]) == pytest.approx(pi_d, abs=1e-5)
    assert train_logs(trainer, "grad_cos")[0] == pytest.approx(g12 / math.sqrt(g11 * g22), abs=1e-5)
    assert train_logs(trainer, "grad_norm_ratio")[0] == pytest.approx(
        g_d.norm().item() / g_t.norm().item(), rel=1e-5
    )

    g_star = pi_d * a_d + (1 - pi_d) * a_t
    c = pi_d / (distill.item() + EPS) + (1 - pi_d) / (task.item() + EPS)
    applied = recorder.grads[0]
    assert torch.allclose(applied, g_star / c, rtol=1e-4, atol=1e-7)
    # equal contribution and alignment of the balanced direction
    assert (g_star @ a_d).item() == pytest.approx((g_star @ a_t).item(), rel=1e-4)
    assert (g_star @ a_d).item() == pytest.approx((g_star @ g_star).item(), rel=1e-4)
    # the logged loss is the balanced raw-loss objective
    w_d, w_t = pi_d / (distill.item() + EPS) / c, (1 - pi_d) / (task.item() + EPS) / c
    assert train_logs(trainer, "loss")[0] == pytest.approx(w_d * distill.item() + w_t * task.item(), rel=1e-5)


def test_rescale_none_applies_the_literal_direction(tmp_path):
    data = random_images(16)
    student, teacher = conflicting_pair()
    reference_student = copy.deepcopy(student)
    recorder = GradRecorder()
    args = tiny_args(tmp_path, method="dto", temperature=2.0, rescale="none")
    DTOKDTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=data, callbacks=[recorder]
    ).train()
    x, y = whole_batch(data)
    params = list(reference_student.parameters())
    distill, task = reference_losses(reference_student, teacher, x, y, 2.0)
    a_d = flat_grads(distill, params) / (distill.item() + EPS)
    a_t = flat_grads(task, params) / (task.item() + EPS)
    g11, g12, g22 = (a_d @ a_d).item(), (a_d @ a_t).item(), (a_t @ a_t).item()
    pi_d = (g22 - g12) / (g11 + g22 - 2 * g12)
    assert torch.allclose(recorder.grads[0], pi_d * a_d + (1 - pi_d) * a_t, rtol=1e-4, atol=1e-7)


def test_amortized_step_equals_a_hand_computed_famo_step(tmp_path):
    data = random_images(16)
    student, teacher = conflicting_pair()
    reference_student = copy.deepcopy(student)
    args = tiny_args(tmp_path, method="dto_amortized", temperature=2.0, learning_rate=0.1)
    trainer = DTOKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data)
    trainer.train()

    x, y = whole_batch(data)
    params = list(reference_student.parameters())
    distill, task = reference_losses(reference_student, teacher, x, y, 2.0)
    l_before = torch.tensor([distill.item(), task.item()]) + EPS
    weights = 0.5 / l_before / (0.5 / l_before).sum()
    gradient = weights[0] * flat_grads(distill, params) + weights[1] * flat_grads(task, params)
    expected_params = flat_params(reference_student) - 0.1 * gradient
    assert torch.allclose(flat_params(trainer.model), expected_params, atol=1e-6)

    torch.nn.utils.vector_to_parameters(expected_params, reference_student.parameters())
    with torch.no_grad():
        distill_after, task_after = reference_losses(reference_student, teacher, x, y, 2.0)
    l_after = torch.tensor([distill_after.item(), task_after.item()]) + EPS
    delta = l_before.log() - l_after.log()
    xi_grad = 0.5 * (delta - 0.5 * delta.sum())
    expected_xi = -0.025 * xi_grad / (xi_grad.abs() + 1e-8)
    assert torch.allclose(trainer.balancer.xi.detach(), expected_xi, atol=1e-7)
    assert train_logs(trainer, "pi_distill")[0] == pytest.approx(0.5)  # pi used by step 1


@pytest.mark.parametrize("method", ["dto", "fixed"])
def test_gradient_accumulation_matches_the_full_batch(tmp_path, method):
    data = random_images(16)
    runs = {}
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
        runs[steps] = (
            train_logs(trainer, "pi_distill"),
            train_logs(trainer, "loss"),
            flat_params(trainer.model),
        )
    (pi_1, loss_1, params_1), (pi_2, loss_2, params_2) = runs[1], runs[2]
    assert len(pi_1) == 3
    assert pi_1 == pytest.approx(pi_2, abs=1e-5)
    assert loss_1 == pytest.approx(loss_2, rel=1e-5)
    assert torch.allclose(params_1, params_2, atol=1e-5)
    assert not torch.allclose(params_1, flat_params(conflicting_pair()[0]), atol=1e-3)


@pytest.mark.parametrize("method", ["dto", "dto_amortized", "fixed"])
def test_student_moves_teacher_does_not_and_the_saved_student_reloads(tmp_path, method):
    student, teacher = tiny_vit(), tiny_resnet()
    student_before, teacher_before = flat_params(student).clone(), flat_params(teacher).clone()
    args = tiny_args(
        tmp_path,
        method=method,
        max_steps=3,
        per_device_train_batch_size=8,
        optim="adamw_torch",
        learning_rate=1e-2,
    )
    trainer = DTOKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=random_images(32))
    trainer.train()
    assert not torch.allclose(flat_params(trainer.model), student_before)
    assert torch.equal(flat_params(trainer.teacher), teacher_before)
    assert not trainer.teacher.training and not any(p.requires_grad for p in trainer.teacher.parameters())
    for key in ("task_loss", "distill_loss", "pi_distill", "nonfinite_losses", "tradeoff_skipped"):
        assert len(train_logs(trainer, key)) == 3, key
    assert ("grad_cos" in trainer.state.log_history[0]) == (method == "dto")

    trainer.save_model(str(tmp_path / "student"))
    reloaded = AutoModelForImageClassification.from_pretrained(str(tmp_path / "student")).eval()
    x = torch.randn(4, 3, 16, 16)
    trainer.model.eval()
    with torch.no_grad():
        assert torch.allclose(
            reloaded(pixel_values=x).logits, trainer.model(pixel_values=x).logits, atol=1e-6
        )


@pytest.mark.parametrize("family", list(family_students()))
def test_every_student_family_trains_with_exact_dto(tmp_path, family):
    student = family_students()[family]()
    before = flat_params(student).clone()
    teacher = family_students()["timm_vit" if family != "timm_vit" else "resnet"]()
    args = tiny_args(tmp_path, method="dto", max_steps=2, per_device_train_batch_size=8, learning_rate=0.05)
    trainer = DTOKDTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=random_images(16),
        eval_dataset=random_images(8, seed=5),
    )
    trainer.train()
    assert not torch.allclose(flat_params(trainer.model), before)
    assert all(math.isfinite(v) for v in train_logs(trainer, "pi_distill"))
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_top1"] <= 1.0 and "eval_top5" not in metrics


def test_teacher_from_a_local_folder_and_config_init_kwargs(tmp_path):
    tiny_resnet().save_pretrained(tmp_path / "teacher")
    args = tiny_args(
        tmp_path,
        teacher_model_name_or_path=str(tmp_path / "teacher"),
        teacher_model_init_kwargs={"dtype": "float32"},
    )
    trainer = DTOKDTrainer(model=tiny_vit(), args=args, train_dataset=random_images(16))
    trainer.train()
    assert torch.equal(flat_params(trainer.teacher), flat_params(tiny_resnet()))


def test_teacher_receives_resized_renormalised_pixels_or_its_own_column(tmp_path):
    seen = []
    teacher = tiny_resnet()
    teacher.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["pixel_values"].clone()), with_kwargs=True
    )
    student_processor = ViTImageProcessor(
        size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    teacher_processor = ViTImageProcessor(
        size={"height": 24, "width": 24}, image_mean=[0.2] * 3, image_std=[0.3] * 3
    )
    data = random_images(16)
    trainer = DTOKDTrainer(
        model=tiny_vit(),
        teacher_model=teacher,
        args=tiny_args(tmp_path),
        train_dataset=data,
        processing_class=student_processor,
        teacher_processing_class=teacher_processor,
    )
    trainer.train()
    x, _ = whole_batch(data)
    expected = (F.interpolate(x * 0.5 + 0.5, size=(24, 24), mode="bilinear", antialias=True) - 0.2) / 0.3
    got = seen[0]
    assert got.shape == (16, 3, 24, 24)
    # the sampler shuffles: compare as sets of images
    order = torch.cdist(got.reshape(16, -1), expected.reshape(16, -1)).argmin(dim=1)
    assert torch.allclose(got, expected[order], atol=1e-5)

    seen.clear()
    own = torch.randn(16, 3, 24, 24)
    with_column = data.add_column("teacher_pixel_values", own.tolist()).with_format("torch")
    DTOKDTrainer(
        model=tiny_vit(),
        teacher_model=teacher,
        args=tiny_args(tmp_path),
        train_dataset=with_column,
        processing_class=student_processor,
        teacher_processing_class=teacher_processor,
    ).train()
    order = torch.cdist(seen[0].reshape(16, -1), own.reshape(16, -1)).argmin(dim=1)
    assert torch.allclose(seen[0], own[order], atol=1e-6)


def test_label_mapping_gathers_teacher_logits(tmp_path):
    args = tiny_args(tmp_path, teacher_label_indices=[5, 0, 3, 1], max_steps=2)
    trainer = DTOKDTrainer(
        model=tiny_vit(), teacher_model=tiny_resnet(num_labels=6), args=args, train_dataset=random_images(16)
    )
    trainer.train()
    assert trainer.teacher_label_index.tolist() == [5, 0, 3, 1]


class NaNTeacherAtStep:
    """Wraps a teacher so that its logits are NaN on the given call (1-based)."""

    def __init__(self, teacher, bad_call):
        self.calls, self.bad_call = 0, bad_call
        teacher.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.calls += 1
        if self.calls == self.bad_call:
            output.logits = torch.full_like(output.logits, float("nan"))
        return output


@pytest.mark.parametrize("method", ["dto", "dto_amortized"])
def test_nonfinite_loss_keeps_pi_counts_the_event_and_training_goes_on(tmp_path, method):
    student, teacher = conflicting_pair()
    NaNTeacherAtStep(teacher, bad_call=2)
    args = tiny_args(tmp_path, method=method, temperature=2.0, max_steps=2)
    trainer = DTOKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=random_images(16))
    trainer.train()
    assert trainer.state.global_step == 2
    pis = train_logs(trainer, "pi_distill")
    assert math.isfinite(pis[1])
    if method == "dto":
        assert pis[1] == pytest.approx(pis[0])  # step 2 kept step 1's pi
    assert train_logs(trainer, "nonfinite_losses") == [0, 1]
    assert train_logs(trainer, "tradeoff_skipped")[-1] == 1


def test_zero_distillation_loss_gives_no_nan(tmp_path):
    student = tiny_vit()
    teacher = copy.deepcopy(student)
    trainer = DTOKDTrainer(
        model=student,
        teacher_model=teacher,
        args=tiny_args(tmp_path, max_steps=2),
        train_dataset=random_images(16),
    )
    trainer.train()
    assert train_logs(trainer, "distill_loss")[0] == 0.0
    assert all(math.isfinite(v) for key in ("pi_distill", "loss") for v in train_logs(trainer, key))
    assert train_logs(trainer, "nonfinite_losses")[-1] == 0


def test_balancer_state_is_saved_in_checkpoints_and_restored(tmp_path):
    args = tiny_args(tmp_path, method="dto_amortized", max_steps=2, save_strategy="steps", save_steps=2)
    trainer = DTOKDTrainer(
        model=tiny_resnet(seed=3), teacher_model=tiny_resnet(), args=args, train_dataset=random_images(16)
    )
    trainer.train()
    checkpoint = tmp_path / "checkpoint-2"
    assert (checkpoint / "dtokd_state.pt").is_file()
    fresh = DTOKDTrainer(
        model=tiny_resnet(seed=3), teacher_model=tiny_resnet(), args=args, train_dataset=random_images(16)
    )
    fresh.create_optimizer_and_scheduler(num_training_steps=2)
    fresh._load_optimizer_and_scheduler(str(checkpoint))
    assert torch.equal(fresh.balancer.xi.detach(), trainer.balancer.xi.detach())
    assert not torch.equal(fresh.balancer.xi.detach(), torch.zeros(2))


# ---------------------------------------------------------------- bad input
def test_label_space_mismatch_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="label spaces differ"):
        DTOKDTrainer(
            model=tiny_vit(num_labels=4),
            teacher_model=tiny_resnet(num_labels=7),
            args=tiny_args(tmp_path),
            train_dataset=random_images(16),
        )


def test_missing_labels_column_is_named(tmp_path):
    data = random_images(16).remove_columns("labels")
    with pytest.raises(ValueError, match="no 'labels' or 'label' column"):
        DTOKDTrainer(
            model=tiny_vit(), teacher_model=tiny_resnet(), args=tiny_args(tmp_path), train_dataset=data
        )


def test_missing_labels_in_a_batch_is_named(tmp_path):
    class NoLabels(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {"pixel_values": torch.randn(3, 16, 16)}

    trainer = DTOKDTrainer(
        model=tiny_vit(), teacher_model=tiny_resnet(), args=tiny_args(tmp_path), train_dataset=NoLabels()
    )
    with pytest.raises(ValueError, match="the batch has no 'labels'"):
        trainer.train()


def test_out_of_range_label_is_named(tmp_path):
    data = random_images(16).cast_column(
        "labels", random_images(16).features["labels"].__class__(num_classes=9)
    )
    data = data.map(lambda row, i: {"labels": 7 if i == 3 else row["labels"]}, with_indices=True)
    with pytest.raises(ValueError, match=r"label 7 outside \[0, 4\).*label -100"):
        DTOKDTrainer(
            model=tiny_vit(), teacher_model=tiny_resnet(), args=tiny_args(tmp_path), train_dataset=data
        )


def test_unloadable_teacher_id_is_named(tmp_path):
    with pytest.raises(ValueError, match="could not load the teacher 'nobody/missing-teacher'"):
        DTOKDTrainer(model=tiny_vit(), teacher_model="nobody/missing-teacher", args=tiny_args(tmp_path))


def test_other_construction_errors(tmp_path):
    from transformers import TrainingArguments

    with pytest.raises(TypeError, match="args must be a DTOKDConfig"):
        DTOKDTrainer(
            model=tiny_vit(), teacher_model=tiny_resnet(), args=TrainingArguments(output_dir=str(tmp_path))
        )
    with pytest.raises(ValueError, match="no teacher"):
        DTOKDTrainer(model=tiny_vit(), args=tiny_args(tmp_path))
    with pytest.raises(ValueError, match="would be ignored"):
        DTOKDTrainer(
            model=tiny_vit(),
            teacher_model=tiny_resnet(),
            args=tiny_args(tmp_path, teacher_model_init_kwargs={"revision": "x"}),
        )
    with pytest.raises(ValueError, match="use bf16=True"):
        DTOKDTrainer(
            model=tiny_vit(),
            teacher_model=tiny_resnet(),
            args=DTOKDConfig(output_dir=str(tmp_path), use_cpu=True, fp16=True, method="dto"),
        )


def test_bf16_runs_with_float32_losses(tmp_path):
    args = tiny_args(tmp_path, bf16=True, max_steps=2)
    trainer = DTOKDTrainer(
        model=tiny_vit(), teacher_model=tiny_resnet(), args=args, train_dataset=random_images(16)
    )
    trainer.train()
    assert all(math.isfinite(v) for v in train_logs(trainer, "pi_distill") + train_logs(trainer, "task_loss"))


def test_tradeoff_scalars_reach_tensorboard(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv(
        "TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb")
    )  # transformers 5.x: no logging_dir field
    args = tiny_args(tmp_path, max_steps=2, report_to="tensorboard")
    trainer = DTOKDTrainer(
        model=tiny_vit(), teacher_model=tiny_resnet(), args=args, train_dataset=random_images(16)
    )
    trainer.train()
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    tags = set(events.Tags()["scalars"])
    for name in (
        "pi_distill",
        "grad_cos",
        "grad_norm_ratio",
        "task_loss",
        "distill_loss",
        "nonfinite_losses",
    ):
        assert f"train/{name}" in tags, tags
    pis = [event.value for event in events.Scalars("train/pi_distill")]
    assert pis == pytest.approx(train_logs(trainer, "pi_distill"))


def test_conflict_figures_count_the_negative_steps_and_keep_the_most_negative():
    from hf_dtokd.trainer.tradeoff_log import conflict_figures

    cosines = torch.tensor([0.5, -0.2, float("nan"), -0.1], dtype=torch.float64)
    assert conflict_figures("grad_cos", cosines) == pytest.approx(
        {"grad_conflict_rate": 2 / 3, "grad_cos_min": -0.2}
    )
    figures = conflict_figures("grad_cos_feature", torch.tensor([0.3, 0.1], dtype=torch.float64))
    assert figures == pytest.approx({"grad_conflict_rate_feature": 0.0, "grad_cos_min_feature": 0.1})
    empty = conflict_figures("grad_cos", torch.tensor([float("nan")], dtype=torch.float64))
    assert all(math.isnan(v) for v in empty.values())


def test_a_logging_interval_reports_per_step_conflict_and_the_applied_weights(tmp_path):
    """Four steps whose cosines are +0.5, -0.2, undefined, -0.1: the mean cosine is positive (0.067), but two
    of the three defined steps conflict; the logged weights are the mean of those applied."""
    trainer = DTOKDTrainer(model=tiny_vit(), teacher_model=tiny_resnet(), args=tiny_args(tmp_path))
    for cosine in (0.5, -0.2, float("nan"), -0.1):
        trainer.tradeoff_log.record("grad_cos", torch.tensor(cosine))
    for weights in ((0.2, 0.8), (0.4, 0.6)):
        trainer.tradeoff_log.record_weights(torch.tensor(weights))
    trainer.log({"loss": 1.0})
    logged = trainer.state.log_history[-1]
    assert logged["grad_cos"] == pytest.approx(0.2 / 3, abs=1e-7)
    assert logged["grad_conflict_rate"] == pytest.approx(2 / 3)
    assert logged["grad_cos_min"] == pytest.approx(-0.2, abs=1e-7)
    assert logged["weight_distill"] == pytest.approx(0.3, abs=1e-7)
    assert logged["weight_task"] == pytest.approx(0.7, abs=1e-7)


def test_the_new_figures_reach_tensorboard_and_the_model_card(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "runs"))
    args = tiny_args(tmp_path, method="dto", max_steps=4, logging_steps=2, report_to="tensorboard")
    fixed_args = tiny_args(tmp_path / "fixed", method="fixed", alpha=0.3, max_steps=2, logging_steps=1)
    fixed = DTOKDTrainer(
        model=tiny_vit(), teacher_model=tiny_resnet(), args=fixed_args, train_dataset=random_images(16)
    )
    fixed.train()
    assert train_logs(fixed, "weight_distill") == pytest.approx([0.3, 0.3])  # alpha, as applied
    trainer = DTOKDTrainer(
        model=tiny_vit(), teacher_model=tiny_resnet(), args=args, train_dataset=random_images(16)
    )
    trainer.train()
    trainer.create_model_card()
    events = EventAccumulator(str(tmp_path / "runs"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for key in ("grad_conflict_rate", "grad_cos_min", "weight_distill", "weight_task"):
        assert f"train/{key}" in tags, key
        assert len(train_logs(trainer, key)) == 2, key  # one value per logging interval
    rates = train_logs(trainer, "grad_conflict_rate")
    assert all(0.0 <= r <= 1.0 for r in rates)
    card = (tmp_path / "README.md").read_text()
    assert "`grad_conflict_rate` (share of optimizer steps whose gradients conflict" in card
    assert "`weight_distill` (the raw-loss weight actually applied)" in card
