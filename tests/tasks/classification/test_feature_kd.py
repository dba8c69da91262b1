"""FeatureKDTrainer: students and projectors train together, the teacher not; saving, resuming, bad stages."""

import copy

import pytest
import torch
from transformers import AutoModelForImageClassification

from hf_dtokd.signals.features import stage_features
from hf_dtokd.tasks.classification.feature_kd import PROJECTORS_NAME, FeatureKDTrainer
from testing_utils import (
    Crash,
    CrashAtStep,
    family_students,
    flat_params,
    random_images,
    tiny_args,
    tiny_resnet,
    tiny_vit,
    train_logs,
    whole_batch,
)


def make(
    folder,
    student=tiny_vit,
    teacher=tiny_resnet,
    callbacks=(),
    projector="vkd",
    group_features=None,
    **overrides,
):
    settings = dict(
        method="dto", max_steps=2, temperature=2.0, per_device_train_batch_size=8, learning_rate=0.05
    )
    settings.update(overrides)
    return FeatureKDTrainer(
        model=student(),
        teacher_model=teacher(),
        args=tiny_args(folder, **settings),
        train_dataset=random_images(16),
        projector=projector,
        group_features=group_features,
        callbacks=list(callbacks),
    )


@pytest.mark.parametrize("projector", ["linear", "vkd", "mokd"])
@pytest.mark.parametrize(
    ("student", "teacher"),
    [(tiny_vit, tiny_resnet), (tiny_resnet, tiny_vit)],
    ids=["cnn_teacher_vit_student", "vit_teacher_cnn_student"],
)
def test_three_objectives_train_student_and_projectors_not_the_teacher(tmp_path, projector, student, teacher):
    trainer = make(tmp_path, student, teacher, projector=projector, group_features=False, max_steps=1)
    wrapper = trainer.model
    teacher_before = flat_params(trainer.teacher).clone()
    student_before, projectors_before = (
        flat_params(wrapper.student).clone(),
        flat_params(wrapper.projectors).clone(),
    )
    trainer.train()
    assert trainer.objective_names == ("distill", "feature", "task")
    assert not torch.allclose(flat_params(wrapper.student), student_before)
    assert not torch.allclose(flat_params(wrapper.projectors), projectors_before)
    assert torch.equal(flat_params(trainer.teacher), teacher_before)
    assert 0.0 <= train_logs(trainer, "pi_feature")[0] <= 1.0


@pytest.mark.parametrize("projector", ["vkd", "mokd"])
def test_orthogonal_projectors_stay_orthonormal_under_the_trainers_weight_decay(tmp_path, projector):
    """The Trainer's AdamW decays the parametrization's trainable matrix: with torch's Householder map (its
    default for non-square matrices) the projector was the zero matrix from the first step on."""
    trainer = make(
        tmp_path, projector=projector, method="fixed", optim="adamw_torch", weight_decay=0.05, max_steps=3
    )
    decayed = trainer.get_decay_parameter_names(trainer.model)
    assert any(name.startswith("projectors.") and name.endswith(".original") for name in decayed)
    trainer.train()
    for module in trainer.model.projectors.modules():
        if hasattr(module, "parametrizations"):  # the orthogonal map: VkD's W, MoKD's teacher basis
            w = module.weight
            gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
            assert torch.allclose(gram, torch.eye(gram.shape[0]), atol=1e-5)


def test_two_objectives_by_default_with_the_parts_logged(tmp_path):
    """The paper's form: logit and feature KD summed into one distillation objective."""
    trainer = make(tmp_path, max_steps=2)
    assert trainer.objective_names == ("distill", "task") and trainer.args.group_features
    trainer.train()
    distill, logit, feature = (
        train_logs(trainer, k)[0] for k in ("distill_loss", "logit_kd_loss", "feature_loss")
    )
    assert logit > 0 and feature > 0
    assert "pi_feature" not in {k for row in trainer.state.log_history for k in row}


def test_the_feature_loss_of_a_step_equals_an_independent_computation(tmp_path):
    trainer = make(tmp_path, max_steps=1, per_device_train_batch_size=16, projector="linear")
    initial = copy.deepcopy(trainer.model)
    trainer.train()
    x, _ = whole_batch(random_images(16))
    with torch.no_grad():
        s_maps = stage_features(initial.student(pixel_values=x, output_hidden_states=True), "student")
        t_maps = stage_features(trainer.teacher(pixel_values=x, output_hidden_states=True), "teacher")
        (s, t), projector = initial.pairs[0], initial.projectors[0]
        resized = torch.nn.functional.interpolate(
            s_maps[s],
            size=t_maps[t].shape[-2:],
            mode="bilinear",
            antialias=s_maps[s].shape[-1] > t_maps[t].shape[-1],
        )
        w, b = projector.proj.weight[:, :, 0, 0], projector.proj.bias
        expected = (
            (torch.einsum("oc,bchw->bohw", w, resized) + b[None, :, None, None] - t_maps[t]) ** 2
        ).mean()
    assert len(initial.pairs) == 1  # one student block, two teacher stages: the last of each
    assert train_logs(trainer, "feature_loss")[0] == pytest.approx(expected.item(), rel=1e-5)


def test_grouped_features_make_two_objectives(tmp_path):
    trainer = FeatureKDTrainer(
        model=tiny_vit(),
        teacher_model=tiny_resnet(),
        args=tiny_args(tmp_path / "grouped"),
        train_dataset=random_images(16),
        group_features=True,
    )
    trainer.train()
    assert trainer.objective_names == ("distill", "task") and train_logs(trainer, "pi_distill")
    # same init and batch, three objectives: the grouped distillation loss is logit KD + feature KD
    separate = FeatureKDTrainer(
        model=tiny_vit(),
        teacher_model=tiny_resnet(),
        args=tiny_args(tmp_path / "three"),
        train_dataset=random_images(16),
        group_features=False,
    )
    separate.train()
    grouped_distill = train_logs(trainer, "distill_loss")[0]
    assert grouped_distill == pytest.approx(
        train_logs(separate, "distill_loss")[0] + train_logs(separate, "feature_loss")[0], rel=1e-5
    )
    assert train_logs(trainer, "task_loss") == pytest.approx(train_logs(separate, "task_loss"), rel=1e-5)


def test_the_saved_student_has_no_projector_or_teacher_keys_and_reloads(tmp_path):
    trainer = make(tmp_path)
    trainer.train()
    trainer.save_model(str(tmp_path / "student"))
    reloaded = AutoModelForImageClassification.from_pretrained(str(tmp_path / "student"))
    assert type(reloaded).__name__ == "ViTForImageClassification"
    keys = list(reloaded.state_dict())
    assert not any("projector" in k or k.startswith(("student.", "resnet")) for k in keys)
    assert torch.equal(flat_params(reloaded), flat_params(trainer.model.student))
    trainer.export_projectors(str(tmp_path / "projectors.safetensors"))
    assert (tmp_path / "projectors.safetensors").stat().st_size > 0
    # the wrapper's forward takes no labels, yet evaluation sees them (accuracy of the student)
    metrics = trainer.evaluate(random_images(8))
    assert 0.0 <= metrics["eval_top1"] <= 1.0 and "eval_loss" in metrics


def test_a_killed_run_resumes_with_its_projectors(tmp_path):
    straight = make(tmp_path / "straight", max_steps=4, save_strategy="steps", save_steps=2)
    straight.train()
    killed = make(
        tmp_path / "run", max_steps=4, save_strategy="steps", save_steps=2, callbacks=[CrashAtStep(3)]
    )
    with pytest.raises(Crash):
        killed.train()
    assert (tmp_path / "run" / "checkpoint-2" / PROJECTORS_NAME).is_file()
    resumed = make(tmp_path / "run", max_steps=4, save_strategy="steps", save_steps=2)
    resumed.train(resume_from_checkpoint=True)
    assert torch.allclose(
        flat_params(resumed.model.projectors), flat_params(straight.model.projectors), atol=1e-6
    )
    assert torch.allclose(flat_params(resumed.model.student), flat_params(straight.model.student), atol=1e-6)


def test_a_checkpoint_with_householder_projectors_is_refused_with_the_reason(tmp_path):
    from safetensors.torch import load_file, save_file

    make(tmp_path / "run", max_steps=1, save_strategy="steps", save_steps=1).train()
    path = tmp_path / "run" / "checkpoint-1" / PROJECTORS_NAME
    # the layout of the Householder map: the trainable matrix alone, no base
    save_file({k: v for k, v in load_file(path).items() if not k.endswith(".0.base")}, path)
    resumed = make(tmp_path / "run", max_steps=2, save_strategy="steps", save_steps=1)
    with pytest.raises(ValueError, match="Householder map.*start the run again"):
        resumed.train(resume_from_checkpoint=str(path.parent))


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(
        ValueError, match=r"stages \[3\] do not exist: the student ViTForImageClassification exposes 1 stages"
    ):
        FeatureKDTrainer(
            model=tiny_vit(),
            teacher_model=tiny_resnet(),
            args=tiny_args(tmp_path),
            student_stages=[3],
            teacher_stages=[0],
        )
    with pytest.raises(ValueError, match="valid values: linear, vkd, mokd"):
        FeatureKDTrainer(
            model=tiny_vit(), teacher_model=tiny_resnet(), args=tiny_args(tmp_path), projector="x"
        )
    with pytest.raises(ValueError, match="use gradient_placement='parameters' with FeatureKDTrainer"):
        FeatureKDTrainer(
            model=tiny_vit(),
            teacher_model=tiny_resnet(),
            args=tiny_args(tmp_path, gradient_placement="representation"),
        )


@pytest.mark.parametrize("family", list(family_students()))
def test_every_student_family_distils_features_from_a_cnn_teacher(tmp_path, family):
    trainer = FeatureKDTrainer(
        model=family_students()[family](),
        teacher_model=tiny_resnet(),
        train_dataset=random_images(8),
        args=tiny_args(tmp_path, max_steps=1, per_device_train_batch_size=8),
    )
    before = flat_params(trainer.model.projectors).clone()
    trainer.train()
    assert torch.isfinite(torch.tensor(train_logs(trainer, "feature_loss"))).all()
    assert not torch.allclose(flat_params(trainer.model.projectors), before)


def test_dot_gives_the_projectors_one_buffer_like_the_authors_code(tmp_path):
    """20 DOT steps of feature KD (grouped into one distillation loss): the projectors, reached by the
    distillation loss only, take the mean momentum and their weight decay on the distillation buffer, as in
    the DOT authors' optimizer fed two separate backwards."""
    from dot_reference import check_trainer_against_the_rule

    data = random_images(16)
    args = tiny_args(
        tmp_path,
        method="dot",
        alpha=0.6,
        max_steps=20,
        learning_rate=0.05,
        weight_decay=0.05,
        temperature=2.0,
        logging_steps=20,
    )
    trainer = FeatureKDTrainer(
        model=tiny_vit(),
        teacher_model=tiny_resnet(),
        args=args,
        train_dataset=data,
        projector="linear",
        group_features=True,
    )
    reference = copy.deepcopy(trainer.model)
    trainer.train()
    teacher, temperature = trainer.teacher, 2.0
    x, y = whole_batch(data)

    def losses():
        out = reference.student(pixel_values=x, output_hidden_states=True)
        with torch.no_grad():
            t_out = teacher(pixel_values=x, output_hidden_states=True)
        (s, t), projector = reference.pairs[0], reference.projectors[0]
        s_map, t_map = stage_features(out, "student")[s], stage_features(t_out, "teacher")[t].detach()
        resized = torch.nn.functional.interpolate(
            s_map, size=t_map.shape[-2:], mode="bilinear", antialias=s_map.shape[-1] > t_map.shape[-1]
        )
        feature = (projector.proj(resized) - t_map).pow(2).mean()
        log_p_s = torch.log_softmax(out.logits / temperature, -1)
        p_t = torch.softmax(t_out.logits / temperature, -1)
        kd = temperature**2 * (p_t * (p_t.log() - log_p_s)).sum(-1).mean()
        return kd + feature, torch.nn.functional.cross_entropy(out.logits, y)

    check_trainer_against_the_rule(trainer, reference, losses, 20, "projectors.")


def test_gram_parameters_student_leaves_the_projectors_out_of_the_gram(tmp_path, monkeypatch):
    """The logged cosine is the one of the student's parameters alone ('student') or of every trainable
    parameter ('all'), recomputed here from the two per-loss gradients the window held before the update."""
    from hf_dtokd.gradients.parameters import WindowGradients
    from hf_dtokd.trainer.dtokd_config import DTOKDConfig

    held = {}
    original = WindowGradients.gram_with_grad

    def keep(self):
        held["distill"] = self.buffers[0].clone()
        held["task"] = torch.cat([p.grad.reshape(-1) for p in self.parameters])
        held["sizes"] = [p.numel() for p in self.parameters]
        held["params"] = list(self.parameters)
        return original(self)

    monkeypatch.setattr(WindowGradients, "gram_with_grad", keep)
    for choice in ("all", "student"):
        trainer = make(tmp_path / choice, max_steps=1, gram_parameters=choice)
        trainer.train()
        student = {id(p) for p in trainer.model.student.parameters()}
        mask = torch.cat(
            [
                torch.full((n,), id(p) in student or choice == "all")
                for n, p in zip(held["sizes"], held["params"])
            ]
        )
        d, t = held["distill"][mask].double(), held["task"][mask].double()
        expected = float(d @ t / (d.norm() * t.norm()))
        assert train_logs(trainer, "grad_cos")[0] == pytest.approx(expected, abs=1e-5)
        assert mask.all() == (choice == "all")
    with pytest.raises(ValueError, match="gram_parameters='student' applies to the Gram methods"):
        DTOKDConfig(output_dir=str(tmp_path), method="fixed", gram_parameters="student")
