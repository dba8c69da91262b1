"""SegmentationKDTrainer on tiny SegFormers and generated masks: every method trains, the invariances hold,
bad inputs are named."""

import json

import pytest
import torch
from transformers import AutoModelForSemanticSegmentation, ViTConfig, ViTForImageClassification

from hf_dtokd import METHODS, SegmentationKDTrainer
from testing_utils import (
    flat_params,
    segformer_processor,
    segmentation_args,
    shape_masks,
    tiny_segformer,
    train_logs,
)

DATA = shape_masks(16)
EVAL = shape_masks(8, seed=11)


def make(tmp_path, student=None, teacher=None, **overrides):
    kwargs = {k: overrides.pop(k) for k in ("segmentation_kd", "group_distillation") if k in overrides}
    train_dataset = overrides.pop("train_dataset", DATA)
    return SegmentationKDTrainer(
        model=student if student is not None else tiny_segformer(0),
        teacher_model=teacher if teacher is not None else tiny_segformer(1, width=16),
        args=segmentation_args(tmp_path, **overrides),
        train_dataset=train_dataset,
        eval_dataset=EVAL,
        processing_class=segformer_processor(),
        **kwargs,
    )


@pytest.mark.parametrize("method", METHODS)
def test_every_method_moves_the_student_not_the_teacher_and_logs_the_tradeoff(tmp_path, method):
    teacher = tiny_segformer(1, width=16)
    teacher_before = flat_params(teacher).clone()
    trainer = make(tmp_path, teacher=teacher, method=method, max_steps=2)
    student_before = flat_params(trainer.model).clone()
    trainer.train()
    assert not torch.equal(flat_params(trainer.model), student_before)
    assert torch.equal(flat_params(trainer.teacher), teacher_before)
    logged = train_logs(trainer, "distill_loss") + train_logs(trainer, "task_loss")
    assert len(logged) == 4 and all(torch.isfinite(torch.tensor(logged)))
    assert len(train_logs(trainer, "weight_distill")) == 2
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_mean_iou"] <= 1.0 and "eval_iou_circle" in metrics


def test_dto_at_the_representation_takes_the_logits(tmp_path):
    trainer = make(tmp_path, method="dto", gradient_placement="representation")
    trainer.train()
    assert trainer.placement.layer == "logits"
    assert all(0.0 <= pi <= 1.0 for pi in train_logs(trainer, "pi_distill"))


def test_the_kd_terms_are_one_objective_by_default_and_one_each_when_ungrouped(tmp_path):
    grouped = make(tmp_path / "grouped", method="dto")
    assert grouped.objective_names == ("distill", "task")
    grouped.train()
    pixel, channel = train_logs(grouped, "pixel_kd_loss")[0], train_logs(grouped, "channel_kd_loss")[0]
    assert train_logs(grouped, "distill_loss")[0] == pytest.approx(pixel + channel, rel=1e-5)
    separate = make(tmp_path / "separate", method="dto", group_distillation=False)
    assert separate.objective_names == ("pixel_kd", "channel_kd", "task")
    separate.train()
    assert train_logs(separate, "pixel_kd_loss")[0] == pytest.approx(pixel, rel=1e-5)
    assert len(train_logs(separate, "weight_pixel_kd")) == 2
    only = make(tmp_path / "only", segmentation_kd=["channel_kd"])
    assert only.task.objective_descriptions()["distill"].startswith("channel-wise distillation")


def test_the_teacher_runs_at_its_own_resolution_and_its_logits_are_resampled(tmp_path):
    from transformers import SegformerImageProcessor

    seen = []
    teacher = tiny_segformer(1, width=16)
    teacher.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["pixel_values"].shape), with_kwargs=True
    )
    trainer = SegmentationKDTrainer(
        model=tiny_segformer(0),
        teacher_model=teacher,
        args=segmentation_args(tmp_path, method="fixed", max_steps=1),
        train_dataset=DATA,
        processing_class=segformer_processor(32),
        teacher_processing_class=SegformerImageProcessor(size={"height": 48, "width": 48}),
    )
    trainer.train()
    assert seen and all(shape[-2:] == (48, 48) for shape in seen)
    assert torch.isfinite(torch.tensor(train_logs(trainer, "distill_loss"))).all()


@pytest.mark.parametrize("method", ["dto", "fixed", "dto_amortized"])
def test_two_micro_batches_of_four_train_as_one_batch_of_eight(tmp_path, method):
    """Ignored pixels are spread unevenly over the micro-batches: only exact window means (labelled pixels
    counted over the window) make accumulation equal one batch."""

    def without_batch_norm(seed):
        # SegFormer's decode head normalises with BatchNorm, whose batch statistics depend on the micro-batch
        # size whatever the trainer does: taken out in both runs, so that the trainer's accumulation is compared
        model = tiny_segformer(seed)
        model.decode_head.batch_norm = torch.nn.Identity()
        return model

    one = make(tmp_path / "one", student=without_batch_norm(0), method=method, max_steps=2)
    one.train()
    two = make(
        tmp_path / "two",
        student=without_batch_norm(0),
        method=method,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=2,
    )
    two.train()
    torch.testing.assert_close(flat_params(two.model), flat_params(one.model), rtol=0, atol=2e-6)
    assert train_logs(two, "task_loss") == pytest.approx(train_logs(one, "task_loss"), rel=1e-5)


def test_a_run_resumed_from_its_checkpoint_ends_like_the_uninterrupted_one(tmp_path):
    settings = dict(
        method="dto_amortized", max_steps=4, save_strategy="steps", save_steps=2, optim="adamw_torch"
    )
    full = make(tmp_path / "full", **settings)
    full.train()
    resumed = make(tmp_path / "resumed", **settings)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    torch.testing.assert_close(flat_params(resumed.model), flat_params(full.model), rtol=0, atol=1e-6)
    assert train_logs(resumed, "pi_distill") == pytest.approx(train_logs(full, "pi_distill"), abs=1e-6)


def test_the_saved_student_reloads_as_a_semantic_segmentation_model(tmp_path):
    trainer = make(tmp_path, method="dto", max_steps=1)
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "saved")
    assert type(reloaded).__name__ == "SegformerForSemanticSegmentation"
    torch.testing.assert_close(flat_params(reloaded), flat_params(trainer.model))
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["id2label"]["1"] == "circle"


def masks_dataset(labels, size=32):
    from datasets import Dataset

    pixels = torch.randn(len(labels), 3, size, size).tolist()
    return Dataset.from_dict({"pixel_values": pixels, "labels": [m.tolist() for m in labels]}).with_format(
        "torch"
    )


def test_bad_masks_are_named_with_the_fix(tmp_path):
    wrong_size = masks_dataset([torch.zeros(16, 16, dtype=torch.long)] * 8)
    with pytest.raises(ValueError, match="must be the size of its image"):
        make(tmp_path, train_dataset=wrong_size).train()
    beyond = masks_dataset([torch.full((32, 32), 7, dtype=torch.long)] * 8)
    with pytest.raises(ValueError, match="class id 7 outside \\[0, 4\\).*not the ignore index 255"):
        make(tmp_path, train_dataset=beyond).train()
    ignored = masks_dataset([torch.full((32, 32), 255, dtype=torch.long)] * 8)
    make(tmp_path, train_dataset=ignored, max_steps=1).train()  # 255 is the ignore index: accepted


def test_a_teacher_with_another_label_set_or_another_kind_of_model_is_refused(tmp_path):
    other = tiny_segformer(1, id2label={0: "background", 1: "cat", 2: "dog", 3: "car"})
    with pytest.raises(ValueError, match="id2label differ.*teacher_label_indices"):
        make(tmp_path, teacher=other)
    fewer = tiny_segformer(1, id2label={0: "background", 1: "circle"})
    with pytest.raises(ValueError, match="the teacher has 2 classes and the student 4"):
        make(tmp_path, teacher=fewer)
    classifier = ViTForImageClassification(
        ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=4,
        )
    )
    with pytest.raises(ValueError, match="not a semantic-segmentation model with per-pixel logits"):
        make(tmp_path, teacher=classifier)


def test_segmentation_kd_terms_are_checked(tmp_path):
    with pytest.raises(ValueError, match="segmentation_kd must name one or more distinct terms"):
        make(tmp_path, segmentation_kd=["pixel_kd", "boundary_kd"])
    with pytest.raises(
        ValueError, match="teacher_cache=True caches the teacher's logits, but SegmentationTask"
    ):
        make(tmp_path, teacher_cache=True)


@pytest.mark.parametrize("method", ["dto", "fixed"])
def test_an_upernet_student_predicting_at_full_resolution_learns_from_a_segformer_teacher(tmp_path, method):
    """UperNet's logits are at the input size, the SegFormer teacher's at a quarter of it: both are resampled
    to the masks' size."""
    from transformers import ResNetConfig, UperNetConfig, UperNetForSemanticSegmentation

    from testing_utils import SEGMENTATION_ID2LABEL

    torch.manual_seed(0)
    backbone = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16, 16, 16],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    student = UperNetForSemanticSegmentation(
        UperNetConfig(
            backbone_config=backbone,
            hidden_size=16,
            auxiliary_in_channels=16,
            auxiliary_channels=8,
            id2label=SEGMENTATION_ID2LABEL,
            label2id={v: k for k, v in SEGMENTATION_ID2LABEL.items()},
        )
    )
    before = flat_params(student.decode_head).clone()
    trainer = make(tmp_path, student=student, method=method)
    trainer.train()
    assert not torch.equal(flat_params(student.decode_head), before)
    assert all(torch.isfinite(torch.tensor(train_logs(trainer, "distill_loss"))))
    assert 0.0 <= trainer.evaluate()["eval_mean_iou"] <= 1.0
