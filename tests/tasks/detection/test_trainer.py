"""DetectionKDTrainer: losses, parameters that move (and a teacher that does not), GA, evaluation, bad input."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import SequentialSampler
from transformers import DetrImageProcessor, ResNetConfig
from transformers.loss.loss_utils import LOSS_MAPPING

from hf_dtokd import DetectionKDTrainer, DetectionTransform, FixedWeights, build_detector, collate_detection
from hf_dtokd.data import SHAPE_CLASSES, generate_shapes
from hf_dtokd.losses import box_kd_loss, class_kd_loss, detection_scores, match_to_teacher
from testing_utils import ID2LABEL, SIZE, detection_args, processor, tiny_args, tiny_detr, train_logs


@pytest.fixture(scope="module")
def shapes():
    return generate_shapes(16, image_size=SIZE, seed=3).with_transform(DetectionTransform(processor(), 3))


class SequentialTrainer(DetectionKDTrainer):
    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)


def test_training_moves_the_student_not_the_teacher_and_logs_each_objective(tmp_path, shapes) -> None:
    student, teacher = tiny_detr(0), tiny_detr(1, queries=4)  # different query counts
    before_student = {k: v.clone() for k, v in student.state_dict().items()}
    before_teacher = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = DetectionKDTrainer(
        model=student,
        teacher_model=teacher,
        args=detection_args(tmp_path, method="dto", max_steps=2),
        train_dataset=shapes,
        group_distillation=False,
    )
    trainer.train()
    moved = [k for k, v in student.state_dict().items() if not torch.equal(v, before_student[k])]
    assert any("class_labels_classifier" in k for k in moved) and any("bbox_predictor" in k for k in moved)
    assert all(torch.equal(v, before_teacher[k]) for k, v in teacher.state_dict().items())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    for key in (
        "pi_class_kd",
        "pi_box_kd",
        "class_kd_loss",
        "box_kd_loss",
        "task_loss",
        "grad_cos_box_kd",
        "task_loss_ce",
        "task_loss_bbox",
        "task_loss_giou",
    ):
        assert len(train_logs(trainer, key)) == 2, key
    pis = train_logs(trainer, "pi_class_kd")[-1] + train_logs(trainer, "pi_box_kd")[-1]
    assert 0.0 <= pis <= 1.0 + 1e-6


def test_the_objectives_are_the_kd_terms_and_the_student_detection_loss(tmp_path, shapes) -> None:
    student, teacher = tiny_detr(0), tiny_detr(1)
    trainer = DetectionKDTrainer(
        model=student,
        teacher_model=teacher,
        args=detection_args(tmp_path, method="dto"),
        box_threshold=0.2,
        train_dataset=shapes,
        group_distillation=False,
    )
    batch = collate_detection([shapes[i] for i in range(6)])
    student.train()
    with torch.no_grad():
        outputs = student(pixel_values=batch["pixel_values"], labels=batch["labels"])
        teacher_outputs = teacher(pixel_values=batch["pixel_values"])
        losses = trainer.task.objective_losses(
            outputs, trainer.task.teacher_signal(teacher_outputs), batch["labels"]
        )
    sl, sb, tl, tb = outputs.logits, outputs.pred_boxes, teacher_outputs.logits, teacher_outputs.pred_boxes
    matches = match_to_teacher(sl, sb, tl, tb, softmax_head=True)
    confidence, _ = detection_scores(tl, softmax_head=True)
    expected = torch.stack(
        [
            class_kd_loss(sl, tl, matches, 2.0, softmax_head=True),
            box_kd_loss(sb, tb, confidence, matches, 0.2),
            outputs.loss,
        ]
    )
    assert torch.allclose(losses, expected, rtol=1e-6)
    grouped = DetectionKDTrainer(  # the default: DTO-KD's two objectives
        model=student,
        teacher_model=teacher,
        box_threshold=0.2,
        args=detection_args(tmp_path / "grouped", method="dto"),
    )
    assert grouped.objective_names == ("distill", "task")
    with torch.no_grad():
        two = grouped.task.objective_losses(
            outputs, grouped.task.teacher_signal(teacher_outputs), batch["labels"]
        )
    assert torch.allclose(two, torch.stack([expected[0] + expected[1], expected[2]]), rtol=1e-6)


def test_gradient_accumulation_averages_the_micro_batch_gradients(tmp_path, shapes) -> None:
    """GA = 2 x 4 images: the update is lr x the mean of the two micro-batches' gradients of sum_k L_k."""
    student, teacher = tiny_detr(0), tiny_detr(1)
    reference = {k: v.clone() for k, v in student.state_dict().items()}
    args = detection_args(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=1)
    trainer = SequentialTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=shapes,
        balancer=FixedWeights(weights=[1.0, 1.0, 1.0]),
        group_distillation=False,
    )
    # the expected update, computed here from the same micro-batches
    manual = tiny_detr(0)
    manual.load_state_dict(reference)
    manual.train()
    for start in (0, 4):
        batch = collate_detection([shapes[i] for i in range(start, start + 4)])
        outputs = manual(pixel_values=batch["pixel_values"], labels=batch["labels"])
        with torch.no_grad():
            signal = trainer.task.teacher_signal(teacher(pixel_values=batch["pixel_values"]))
        (trainer.task.objective_losses(outputs, signal, batch["labels"]).sum() / 2).backward()
    expected = {n: p.detach() - 0.05 * p.grad for n, p in manual.named_parameters() if p.grad is not None}
    trainer.train()
    trained = dict(student.named_parameters())
    for name, value in expected.items():
        assert torch.allclose(trained[name].detach(), value, atol=1e-6), name


@pytest.mark.parametrize(
    ("method", "per_micro_batch"), [("dto", 1), ("dto_amortized", 2), ("dot", 1)]
)  # dot: 2 objectives
def test_the_detection_loss_runs_the_same_number_of_times_whatever_the_data(
    tmp_path, shapes, monkeypatch, method: str, per_micro_batch: int
) -> None:
    """DETR-family losses all-reduce the box count: every rank must call them equally often per step,
    including ranks whose images have no targets or whose teacher sees nothing above the threshold."""
    calls = []
    loss = LOSS_MAPPING["ForObjectDetection"]
    monkeypatch.setitem(LOSS_MAPPING, "ForObjectDetection", lambda *a, **k: calls.append(1) or loss(*a, **k))
    empty = generate_shapes(16, image_size=SIZE, seed=4)
    empty = empty.map(lambda row: {"objects": {"id": [], "area": [], "bbox": [], "category": []}})
    empty = empty.with_transform(DetectionTransform(processor(), 3))
    counts = []
    for name, data, threshold in (("shapes", shapes, 0.0), ("no_targets", empty, 0.99)):
        calls.clear()
        args = detection_args(
            tmp_path / name,
            method=method,
            max_steps=2,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=2,
        )
        trainer = DetectionKDTrainer(
            model=tiny_detr(0),
            teacher_model=tiny_detr(1),
            args=args,
            train_dataset=data,
            box_threshold=threshold,
            group_distillation=method == "dot",
        )
        trainer.train()
        counts.append(len(calls))
        assert all(torch.isfinite(torch.tensor(train_logs(trainer, "task_loss"))))
    assert counts == [2 * 2 * per_micro_batch] * 2


def test_evaluate_reports_coco_map_and_per_class_ap(tmp_path, shapes) -> None:
    trainer = DetectionKDTrainer(
        model=tiny_detr(0),
        teacher_model=tiny_detr(1),
        args=detection_args(tmp_path, per_device_eval_batch_size=8),
        eval_dataset=shapes,
        processing_class=processor(),
    )
    metrics = trainer.evaluate()
    for key in ("eval_loss", "eval_map", "eval_map_50", "eval_map_75", "eval_mar_100"):
        assert key in metrics
    assert {f"eval_map_{name}" for name in SHAPE_CLASSES} <= set(metrics)
    assert trainer.args.eval_do_concat_batches is False


def test_bad_input_is_refused_with_the_fix(tmp_path, shapes) -> None:
    from hf_dtokd import DTOKDConfig
    from testing_utils import tiny_vit

    with pytest.raises(ValueError, match="AutoModelForObjectDetection"):
        DetectionKDTrainer(model=tiny_vit(), teacher_model=tiny_detr(1), args=detection_args(tmp_path))
    with pytest.raises(ValueError, match="label spaces differ"):
        DetectionKDTrainer(
            model=tiny_detr(0),
            teacher_model=tiny_detr(1, id2label={0: "a", 1: "b"}),
            args=detection_args(tmp_path),
        )
    # a mapping makes differing label spaces usable: student class i <- teacher class indices[i]
    mapped = DetectionKDTrainer(
        model=tiny_detr(0),
        teacher_model=tiny_detr(1, id2label={0: "x", 1: "y", 2: "z", 3: "w"}),
        args=detection_args(tmp_path, teacher_label_indices=[3, 0, 1]),
    )
    with torch.no_grad():
        outputs = mapped.teacher(pixel_values=torch.randn(1, 3, SIZE, SIZE))
    logits, _, _ = mapped.task.teacher_signal(outputs)
    assert torch.equal(logits, outputs.logits[..., [3, 0, 1, 4]])  # "no object" stays last
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        DetectionKDTrainer(
            model=tiny_detr(0), teacher_model=tiny_detr(1), train_dataset=shapes, args=tiny_args(tmp_path)
        )
    two = {
        0: "circle",
        1: "square",
    }  # the shapes hold class 2 (triangle): found in the dataset's Arrow column
    with pytest.raises(ValueError, match=r"train_dataset objects: class id 2 is outside \[0, 2\)"):
        DetectionKDTrainer(
            model=tiny_detr(0, id2label=two),
            teacher_model=tiny_detr(1, id2label=two),
            train_dataset=shapes,
            args=detection_args(tmp_path),
        )
    with pytest.raises(ValueError, match="box_threshold"):
        DetectionKDTrainer(
            model=tiny_detr(0), teacher_model=tiny_detr(1), args=detection_args(tmp_path), box_threshold=1.5
        )
    with pytest.raises(ValueError, match="processing_class"):
        DetectionKDTrainer(
            model=tiny_detr(0), teacher_model=tiny_detr(1), args=detection_args(tmp_path), eval_dataset=shapes
        )
    with pytest.raises(ValueError, match="representation_layer"):
        DetectionKDTrainer(
            model=tiny_detr(0),
            teacher_model=tiny_detr(1),
            args=detection_args(tmp_path, gradient_placement="representation"),
        )
    bad = generate_shapes(4, image_size=SIZE, seed=1).with_transform(DetectionTransform(processor(), 3))
    trainer = DetectionKDTrainer(
        model=tiny_detr(0), teacher_model=tiny_detr(1), args=detection_args(tmp_path)
    )
    batch = collate_detection([bad[i] for i in range(2)])
    batch["labels"][0]["boxes"] = torch.tensor([[0.1, 0.1, 0.6, 0.6]])  # xyxy where cxcywh is expected
    with pytest.raises(ValueError, match="cxcywh"):
        trainer.split_batch(batch)
    assert isinstance(DTOKDConfig, type)


def test_a_short_run_raises_the_students_map_on_generated_shapes(tmp_path) -> None:
    """RT-DETR (the demo's family) at 64 px: 150 steps fit 16 generated images (mAP50 on them from 0 to > 0.2).

    Held-out gains need longer runs: the detection demo measures them (README)."""
    from hf_dtokd.demos.shapes import build_model
    from hf_dtokd.tasks.detection.models import detection_processor

    rt_processor = detection_processor("rt_detr", 64)
    data = generate_shapes(16, image_size=64, max_objects=2, seed=7).with_transform(
        DetectionTransform(rt_processor, 3)
    )
    args = detection_args(
        tmp_path,
        method="fixed",
        alpha=0.1,
        max_steps=150,
        learning_rate=3e-3,
        optim="adamw_torch",
        per_device_train_batch_size=16,
        per_device_eval_batch_size=16,
        max_grad_norm=1.0,
        logging_steps=50,
    )
    trainer = DetectionKDTrainer(
        model=build_model("student", 0, 8, 32),
        teacher_model=build_model("teacher", 1),
        args=args,
        group_distillation=True,
        train_dataset=data,
        eval_dataset=data,
        processing_class=rt_processor,
    )
    untrained = trainer.evaluate()["eval_map_50"]
    trainer.train()
    trained = trainer.evaluate()["eval_map_50"]
    assert trained > untrained + 0.2, (untrained, trained)


def family_detector(head: str, seed: int) -> torch.nn.Module:
    from transformers import AutoModelForObjectDetection, YolosConfig

    torch.manual_seed(seed)
    if head == "yolos":
        config = YolosConfig(
            image_size=[SIZE, SIZE],
            patch_size=8,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            num_detection_tokens=5,
            id2label=ID2LABEL,
            label2id={v: k for k, v in ID2LABEL.items()},
        )
        return AutoModelForObjectDetection.from_config(config)
    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1] * 4, layer_type="basic")
    extra = {"encoder_hidden_dim": 32, "num_denoising": 4} if head in ("rt_detr", "d_fine") else {}
    return build_detector(
        head,
        backbone,
        ID2LABEL,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=5,
        **extra,
    )


@pytest.mark.parametrize(
    "head", ["detr", "conditional_detr", "deformable_detr", "rt_detr", "d_fine", "yolos"]
)
def test_every_family_distils_with_token_kd(tmp_path, shapes, head: str) -> None:
    student, teacher = family_detector(head, 0), family_detector(head, 1)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer = DetectionKDTrainer(
        model=student,
        teacher_model=teacher,
        token_projector="linear",
        group_distillation=False,
        train_dataset=shapes,
        args=detection_args(
            tmp_path, method="dto", max_steps=1, learning_rate=1e-2, per_device_train_batch_size=4
        ),
    )
    assert trainer.objective_names == ("class_kd", "box_kd", "token_kd", "task")
    projector = {k: v.clone() for k, v in trainer.model.projectors.state_dict().items()}
    trainer.train()
    assert all(
        torch.isfinite(torch.tensor(train_logs(trainer, f"{name}_loss"))).all()
        for name in trainer.objective_names
    )
    assert any(not torch.equal(v, before[k]) for k, v in student.state_dict().items())
    assert train_logs(trainer, "pi_token_kd")
    moved = any(not torch.equal(v, projector[k]) for k, v in trainer.model.projectors.state_dict().items())
    assert moved or train_logs(trainer, "pi_token_kd")[-1] < 1e-6  # DTO-KD may give token KD no weight


def test_token_kd_saves_the_student_alone_and_checkpoints_the_projector(tmp_path, shapes) -> None:
    from transformers import AutoModelForObjectDetection

    from hf_dtokd.signals.student_with_projectors import PROJECTORS_NAME

    args = detection_args(
        tmp_path / "run",
        method="dto",
        max_steps=2,
        save_strategy="steps",
        save_steps=2,
        per_device_train_batch_size=4,
    )
    trainer = DetectionKDTrainer(
        model=tiny_detr(0),
        teacher_model=tiny_detr(1),
        token_projector="vkd",
        args=args,
        train_dataset=shapes,
        eval_dataset=shapes,
        processing_class=processor(),
    )
    trainer.train()
    assert (
        "eval_map" in trainer.evaluate()
    )  # the wrapped student's forward has no labels: they still reach metrics
    assert (tmp_path / "run" / "checkpoint-2" / PROJECTORS_NAME).is_file()
    trainer.save_model(str(tmp_path / "final"))
    reloaded = AutoModelForObjectDetection.from_pretrained(tmp_path / "final")
    student = trainer.student.state_dict()
    assert set(reloaded.state_dict()) == set(student)
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in student.items())
    with pytest.raises(ValueError, match="valid values: linear, vkd, mokd"):
        DetectionKDTrainer(model=tiny_detr(0), teacher_model=tiny_detr(1), token_projector="conv", args=args)


def test_a_teacher_at_another_image_size_gets_its_own_pixels(tmp_path) -> None:
    teacher_processor = DetrImageProcessor(
        size={"height": 48, "width": 48}, do_pad=False, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    data = generate_shapes(8, image_size=SIZE, seed=3).with_transform(
        DetectionTransform(processor(), 3, teacher_processor=teacher_processor)
    )
    teacher, seen = tiny_detr(1), []
    teacher.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["pixel_values"].shape), with_kwargs=True
    )
    trainer = DetectionKDTrainer(
        model=tiny_detr(0),
        teacher_model=teacher,
        train_dataset=data,
        args=detection_args(tmp_path, method="dto", max_steps=1),
    )
    trainer.train()
    assert seen and all(shape[-2:] == (48, 48) for shape in seen)
    assert all(torch.isfinite(torch.tensor(train_logs(trainer, "class_kd_loss"))))


def test_a_short_last_evaluation_batch_keeps_every_target_whole(tmp_path):
    """11 images in batches of 2 and of 1 give the same mAP: the last batch's per-image target dicts are not
    cut to the batch remainder (accelerate trims every tensor of a gathered batch to it)."""
    from testing_utils import evaluation_set as images
    from testing_utils import oracle_detr

    def evaluate(batch):
        args = detection_args(tmp_path / str(batch), per_device_eval_batch_size=batch)
        trainer = DetectionKDTrainer(
            model=oracle_detr(),
            teacher_model=tiny_detr(1),
            args=args,
            eval_dataset=images(),
            processing_class=processor(),
        )
        return trainer.evaluate()

    whole, short_last = evaluate(1), evaluate(2)
    assert 0.05 < whole["eval_map"] < 0.95
    for name in ("eval_map", "eval_map_50", "eval_mar_100", "eval_map_circle"):
        assert short_last[name] == pytest.approx(whole[name], abs=1e-9), name
