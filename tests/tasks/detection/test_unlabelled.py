"""Unlabelled images in detection KD: the draw, what the losses read, invariances (alpha 0, resume), bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import SequentialSampler

from hf_dtokd import DetectionKDConfig, DetectionKDTrainer, DetectionTransform, UnlabelledImageTransform
from hf_dtokd.data import generate_shapes
from hf_dtokd.losses import box_kd_loss, class_kd_loss, detection_scores, match_to_teacher
from hf_dtokd.tasks.detection.unlabelled import UnlabelledImages, collate_unlabelled
from testing_utils import SIZE, detection_args, processor, tiny_detr, train_logs


@pytest.fixture(scope="module")
def shapes():
    return generate_shapes(16, image_size=SIZE, seed=3).with_transform(DetectionTransform(processor(), 3))


@pytest.fixture(scope="module")
def unlabelled():
    images = generate_shapes(12, image_size=SIZE, seed=5).remove_columns(["objects"])
    return images.with_transform(UnlabelledImageTransform(processor()))


class SequentialTrainer(DetectionKDTrainer):
    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)


def numbered(n: int) -> list[dict[str, torch.Tensor]]:
    """Rows whose pixels carry their index."""
    return [{"pixel_values": torch.full((3, 2, 2), float(i))} for i in range(n)]


def test_each_pass_draws_every_image_once_and_processes_draw_disjoint_slices() -> None:
    n, batch, processes = 12, 3, 2  # two micro-batches per pass
    streams = [
        UnlabelledImages(numbered(n), batch, seed=7, process_index=p, num_processes=processes) for p in (0, 1)
    ]
    drawn = [index for k in range(10) for stream in streams for index in stream.indices(k)]  # 5 passes
    for start in range(0, len(drawn), n):
        assert sorted(drawn[start : start + n]) == list(range(n)), "a pass must hold every image once"
    for k in range(10):
        assert not set(streams[0].indices(k)) & set(streams[1].indices(k))
    assert drawn[:n] != drawn[n : 2 * n], "each pass is reshuffled"
    # a pure function of (seed, micro-batch, process): a fresh stream (a resumed run) draws the same images
    fresh = UnlabelledImages(numbered(n), batch, seed=7, process_index=1, num_processes=processes)
    assert [fresh.indices(k) for k in (9, 3, 0)] == [streams[1].indices(k) for k in (9, 3, 0)]
    other_seed = UnlabelledImages(numbered(n), batch, seed=8)
    assert [other_seed.indices(k) for k in range(4)] != [streams[0].indices(k) for k in range(4)]
    images = streams[0].batch(2)["pixel_values"]
    assert images.shape == (batch, 3, 2, 2)
    assert images[:, 0, 0, 0].long().tolist() == streams[0].indices(2)


def test_unlabelled_images_enter_the_kd_terms_and_not_the_task_loss(tmp_path, shapes, unlabelled) -> None:
    """The KD terms are means over the matched queries of both forwards (each image has min(Q_s, Q_t) matched
    pairs, so the union's class KD is the image-weighted mean of the parts'); the task loss is the labelled
    images' detection loss."""
    student, teacher = tiny_detr(0), tiny_detr(1, queries=4)
    trainer = DetectionKDTrainer(
        model=student,
        teacher_model=teacher,
        args=detection_args(tmp_path, method="dto"),
        train_dataset=shapes,
        unlabelled_dataset=unlabelled,
        group_distillation=False,
        box_threshold=0.0,  # every matched teacher box weighs in
    )
    batch = shapes[:6]
    batch = {"pixel_values": batch["pixel_values"], "labels": batch["labels"]}
    extra = collate_unlabelled([unlabelled[i] for i in range(4)])
    inputs = {**batch, "unlabelled_pixel_values": extra["pixel_values"]}
    student.train()
    with torch.no_grad():
        outputs = trainer.task.student_forward(student, inputs)
        signal = trainer.teacher_signal_of(dict(inputs), None)
        losses = trainer.task.objective_losses(outputs, signal, batch["labels"])
        labelled = student(pixel_values=batch["pixel_values"], labels=batch["labels"])
        alone = student(pixel_values=extra["pixel_values"])
        parts = []
        for out, pixels in ((labelled, batch["pixel_values"]), (alone, extra["pixel_values"])):
            t = teacher(pixel_values=pixels)
            matches = match_to_teacher(out.logits, out.pred_boxes, t.logits, t.pred_boxes, softmax_head=True)
            confidence, _ = detection_scores(t.logits, softmax_head=True)
            parts.append(
                (
                    class_kd_loss(out.logits, t.logits, matches, 2.0, softmax_head=True),
                    box_kd_loss(out.pred_boxes, t.pred_boxes, confidence, matches, 0.0),
                    confidence,
                    matches,
                )
            )
    assert signal[0].shape[0] == 10
    assert losses[2] == pytest.approx(labelled.loss.item(), rel=1e-6)
    class_union = (6 * parts[0][0] + 4 * parts[1][0]) / 10
    assert losses[0] == pytest.approx(class_union.item(), rel=1e-5)
    # box KD is a confidence-weighted mean: the union's weights are both parts' weights

    def weight(confidence, matches):
        return sum(
            confidence[b, cols][confidence[b, cols] >= 0.3].sum() for b, (_, cols) in enumerate(matches)
        )

    w0, w1 = weight(parts[0][2], parts[0][3]), weight(parts[1][2], parts[1][3])
    if w0 + w1 > 0:
        box_union = (parts[0][1] * w0 + parts[1][1] * w1) / (w0 + w1)
        assert losses[1] == pytest.approx(box_union.item(), rel=1e-5)
    assert not torch.allclose(losses[0], parts[0][0]), "the unlabelled images must change the KD terms"


def test_the_teacher_reads_both_sets_in_one_forward_when_they_stack(tmp_path, shapes, unlabelled) -> None:
    """Same image size: one teacher forward over labelled + unlabelled images; another size (the labelled batch
    padded larger): one forward each. Both give the signal of separate forwards, in the student's order."""
    student, teacher = tiny_detr(0), tiny_detr(1, queries=4)
    trainer = DetectionKDTrainer(
        model=student,
        teacher_model=teacher,
        args=detection_args(tmp_path, method="dto"),
        train_dataset=shapes,
        unlabelled_dataset=unlabelled,
    )
    calls = []
    teacher.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(kwargs["pixel_values"].shape[0]), with_kwargs=True
    )
    pixels = shapes[:6]["pixel_values"]
    extra = collate_unlabelled([unlabelled[i] for i in range(4)])["pixel_values"]
    padded = torch.nn.functional.pad(pixels, (0, 8, 0, 8))
    with torch.no_grad():
        separate = [
            trainer.teacher_signal_of({"pixel_values": images}, None) for images in (pixels, extra, padded)
        ]
        calls.clear()
        joined = trainer.teacher_signal_of({"pixel_values": pixels, "unlabelled_pixel_values": extra}, None)
        assert calls == [10], "images of one size: one teacher forward"
        apart = trainer.teacher_signal_of({"pixel_values": padded, "unlabelled_pixel_values": extra}, None)
        assert calls == [10, 6, 4], "another size: one forward per set"
    for got, parts in ((joined, separate[:2]), (apart, (separate[2], separate[1]))):
        for value, first, second in zip(got, *parts):
            assert torch.allclose(value, torch.cat([first, second]), atol=1e-6)


def run(tmp_path, shapes, unlabelled_dataset, **overrides):
    student, teacher = tiny_detr(0), tiny_detr(1)
    before_teacher = {k: v.clone() for k, v in teacher.state_dict().items()}
    args = detection_args(
        tmp_path, per_device_train_batch_size=4, **{"method": "fixed", "max_steps": 3, **overrides}
    )
    trainer = SequentialTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=shapes,
        unlabelled_dataset=unlabelled_dataset,
    )
    trainer.train()
    assert all(torch.equal(v, before_teacher[k]) for k, v in teacher.state_dict().items())
    return trainer, {k: v.detach().clone() for k, v in student.named_parameters()}


def test_with_alpha_zero_the_unlabelled_images_change_nothing_and_with_kd_they_do(
    tmp_path, shapes, unlabelled
):
    _, plain = run(tmp_path / "plain", shapes, None, alpha=0.0)
    _, ignored = run(tmp_path / "zero", shapes, unlabelled, alpha=0.0)
    for name, value in plain.items():
        assert torch.equal(value, ignored[name]), f"{name}: alpha 0 must not read the unlabelled images"
    kd_trainer, kd = run(tmp_path / "kd", shapes, unlabelled, alpha=0.5)
    _, kd_plain = run(tmp_path / "kd_plain", shapes, None, alpha=0.5)
    moved = [n for n in kd if not torch.allclose(kd[n], kd_plain[n], atol=1e-7)]
    assert any("class_labels_classifier" in n for n in moved) and any("bbox_predictor" in n for n in moved)
    assert len(train_logs(kd_trainer, "distill_loss")) == 3 and kd_trainer._unlabelled_drawn == 3


@pytest.mark.parametrize(
    "settings",
    [{"method": "dto_amortized"}, {"method": "famo", "look_ahead": "same_batch"}, {"method": "dto"}],
    ids=["dto_amortized", "famo_same_batch", "dto"],
)
def test_every_kind_of_method_distils_on_unlabelled_images(tmp_path, shapes, unlabelled, settings):
    """Amortized and look-ahead methods re-evaluate the losses after the step: with the unlabelled forward too."""
    forwards = []

    class Recording(SequentialTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            student_forward = self.task.student_forward

            def recorded(model, inputs):
                forwards.append("unlabelled_pixel_values" in inputs)
                return student_forward(model, inputs)

            self.task.student_forward = recorded

    student, teacher = tiny_detr(0), tiny_detr(1)
    args = detection_args(tmp_path, per_device_train_batch_size=4, max_steps=2, **settings)
    trainer = Recording(
        model=student, teacher_model=teacher, args=args, train_dataset=shapes, unlabelled_dataset=unlabelled
    )
    trainer.train()
    look_ahead = trainer.balancer.needs_look_ahead and args.look_ahead == "same_batch"
    # dto_amortized and FAMO re-evaluate the losses on the same micro-batch after the step; dto does not
    assert look_ahead == (settings["method"] != "dto")
    assert len(forwards) == 2 * (2 if look_ahead else 1) and all(forwards), forwards
    pis = train_logs(trainer, "pi_distill")
    assert len(pis) == 2 and all(0.0 <= p <= 1.0 for p in pis)
    assert all(math.isfinite(v) for v in train_logs(trainer, "distill_loss"))


def test_a_resumed_run_draws_the_images_the_uninterrupted_run_drew(tmp_path, shapes, unlabelled) -> None:
    """Gradient accumulation 2: micro-batch k of the run draws the stream's micro-batch k, resumed or not."""
    settings = dict(alpha=0.5, gradient_accumulation_steps=2, save_strategy="steps", save_steps=2)
    _, whole = run(tmp_path / "whole", shapes, unlabelled, **{**settings, "max_steps": 4})
    run(tmp_path / "parts", shapes, unlabelled, **{**settings, "max_steps": 2})
    student, teacher = tiny_detr(5), tiny_detr(1)  # another init: the checkpoint must overwrite it
    args = detection_args(
        tmp_path / "parts", method="fixed", per_device_train_batch_size=4, **{**settings, "max_steps": 4}
    )
    trainer = SequentialTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=shapes, unlabelled_dataset=unlabelled
    )
    trainer.train(resume_from_checkpoint=str(tmp_path / "parts" / "checkpoint-2"))
    assert trainer._unlabelled_drawn == 8
    for name, value in student.named_parameters():
        assert torch.allclose(value, whole[name], atol=1e-6), name


def test_bad_unlabelled_input_is_refused_with_the_fix(tmp_path, shapes, unlabelled) -> None:
    def trainer(**kwargs):
        args = kwargs.pop("args", detection_args(tmp_path))
        return DetectionKDTrainer(model=tiny_detr(0), teacher_model=tiny_detr(1), args=args, **kwargs)

    with pytest.raises(ValueError, match="without unlabelled images"):
        config = DetectionKDConfig(
            output_dir=str(tmp_path), use_cpu=True, report_to="none", unlabelled_batch_size=4
        )
        trainer(args=config, train_dataset=shapes)
    with pytest.raises(ValueError, match="unlabelled_batch_size must be >= 1"):
        DetectionKDConfig(output_dir=str(tmp_path), unlabelled_batch_size=0)
    with pytest.raises(ValueError, match="gradient_placement='parameters'"):
        trainer(
            args=detection_args(
                tmp_path, method="dto", gradient_placement="representation", representation_layer="model"
            ),
            unlabelled_dataset=unlabelled,
        )
    with pytest.raises(ValueError, match="empty"):
        trainer(unlabelled_dataset=[])
    with pytest.raises(ValueError, match="need 'pixel_values'.*UnlabelledImageTransform"):
        trainer(unlabelled_dataset=generate_shapes(2, image_size=SIZE, seed=5))
    with pytest.raises(ValueError, match="need an 'image' column"):
        UnlabelledImageTransform(processor())({"pixels": []})
    with pytest.raises(ValueError, match="different sizes"):
        collate_unlabelled([{"pixel_values": torch.zeros(3, 4, 4)}, {"pixel_values": torch.zeros(3, 8, 8)}])
