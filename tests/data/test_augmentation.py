"""DeiT-style augmentation: timm's Mixup / CutMix as soft targets the trainer takes, RandAugment on access,
and evaluation that never sees a mixed batch."""

import pytest
import torch
import torch.nn.functional as F
from transformers import DefaultDataCollator, ViTImageProcessor

from hf_dtokd import DTOKDTrainer
from hf_dtokd.data import MixupCollator, augmented_images, deit_train_transform, load_digits_splits
from hf_dtokd.losses import task_cross_entropy
from hf_dtokd.tasks.classification.task import ClassificationTask
from hf_dtokd.trainer.window_means import count_window
from testing_utils import NUM_LABELS, random_images, tiny_args, tiny_resnet, tiny_vit, train_logs


def features(n, seed=0):
    data = random_images(n, seed=seed)
    return [data[i] for i in range(n)]


def test_mixup_gives_smoothed_soft_targets_and_leaves_an_odd_batchs_last_image_unmixed():
    torch.manual_seed(0)
    collator = MixupCollator(NUM_LABELS, label_smoothing=0.1)
    rows = features(5)
    batch = collator(rows)
    targets = batch["labels"]
    assert targets.shape == (5, NUM_LABELS) and targets.dtype == torch.float32
    assert torch.allclose(targets.sum(dim=1), torch.ones(5))
    off = 0.1 / NUM_LABELS
    last = torch.full((NUM_LABELS,), off)
    last[int(rows[4]["labels"])] = 1 - 0.1 + off
    assert torch.allclose(targets[4], last)
    assert torch.equal(batch["pixel_values"][4], rows[4]["pixel_values"])  # unmixed
    assert not torch.equal(batch["pixel_values"][:4], torch.stack([r["pixel_values"] for r in rows[:4]]))


def test_mixup_refuses_unlabelled_examples():
    rows = features(4)
    rows[1] = {**rows[1], "labels": torch.tensor(-100)}
    with pytest.raises(ValueError, match="no -100"):
        MixupCollator(NUM_LABELS)(rows)


def test_soft_target_cross_entropy_is_minus_sum_of_targets_times_log_softmax():
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 4), torch.softmax(torch.randn(6, 4), dim=1)
    expected = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    assert torch.allclose(task_cross_entropy(logits, targets), expected, atol=1e-6)
    with pytest.raises(ValueError, match="soft targets of shape"):
        task_cross_entropy(logits, targets[:, :3])


def test_every_soft_target_row_counts_as_labelled():
    from accelerate import Accelerator

    soft = {"labels": torch.full((3, 4), 0.25)}
    hard = {"labels": torch.tensor([1, -100])}
    counts = count_window(
        [soft, hard], ClassificationTask(None).example_counts, Accelerator(cpu=True), across_processes=False
    )
    assert (float(counts.examples), float(counts.labelled)) == (5.0, 4.0)


def test_the_trainer_trains_on_mixed_batches_and_evaluates_on_clean_ones(tmp_path):
    data = random_images(16)
    trainer = DTOKDTrainer(
        model=tiny_vit(),
        teacher_model=tiny_resnet(),
        args=tiny_args(tmp_path, method="dto", max_steps=2, per_device_train_batch_size=8),
        train_dataset=data,
        eval_dataset=data,
        data_collator=MixupCollator(NUM_LABELS),
    )
    batch = next(iter(trainer.get_eval_dataloader()))
    assert batch["labels"].dtype == torch.long and torch.equal(batch["labels"].cpu(), data["labels"][:16])
    trainer.train()
    assert all(loss > 0 for loss in train_logs(trainer, "task_loss"))
    assert "eval_loss" in trainer.evaluate()
    assert isinstance(trainer.data_collator, MixupCollator)  # restored after evaluation


def test_a_teacher_cache_with_mixed_batches_is_refused(tmp_path):
    with pytest.raises(ValueError, match="teacher_cache=True stores the teacher's logits"):
        DTOKDTrainer(
            model=tiny_vit(),
            teacher_model=tiny_resnet(),
            args=tiny_args(tmp_path, teacher_cache=True),
            train_dataset=random_images(8),
            data_collator=MixupCollator(NUM_LABELS),
        )


def test_bad_soft_targets_are_named(tmp_path):
    trainer = DTOKDTrainer(model=tiny_vit(), teacher_model=tiny_resnet(), args=tiny_args(tmp_path))
    with pytest.raises(ValueError, match="soft targets of shape"):
        trainer.task.check_label_values(torch.full((2, NUM_LABELS + 1), 0.1).numpy(), "the batch")


def test_rand_augment_changes_the_images_on_access_and_keeps_the_labels():
    digits = load_digits_splits()["train"].select(range(8))
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    clean = augmented_images(digits, processor, policy=None, augment_size=32)
    augmented = augmented_images(digits, processor, augment_size=32)
    first, second = augmented[:8]["pixel_values"], augmented[:8]["pixel_values"]
    assert first.shape == clean[:8]["pixel_values"].shape == (8, 3, 32, 32)
    assert not torch.equal(first, second)  # drawn anew on every access
    assert augmented["label"] == digits["label"]
    batch = DefaultDataCollator()([augmented[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["labels"].tolist() == digits["label"][:4]


def test_deit_transform_is_timms_training_transform_at_the_processors_size():
    digits = load_digits_splits()["train"].select(range(4))
    processor = ViTImageProcessor(size={"height": 24, "width": 24})
    pixels = deit_train_transform(digits, processor)[:4]["pixel_values"]
    assert pixels.shape == (4, 3, 24, 24)
    with pytest.raises(ValueError, match="no 'img' column"):
        deit_train_transform(digits, processor, image_column="img")
