"""Exact window means: a window whose micro-batches hold different numbers of (labelled) examples trains
like one batch holding the whole window."""

import pytest
import torch
from accelerate import Accelerator

from hf_dtokd import DTOKDTrainer
from hf_dtokd.tasks.classification.task import ClassificationTask
from hf_dtokd.trainer.window_means import WindowCounts, count_window, micro_batch_scales
from testing_utils import conflicting_pair, partly_labelled, random_images, tiny_args, train_logs

COUNT = ClassificationTask(None).example_counts  # examples and labelled examples of a batch's labels


def test_scales_turn_micro_batch_means_into_the_window_mean():
    """(1/s) sum_j scale_j mean_j = sum over the window / its count, for per-example losses drawn at random."""
    generator = torch.Generator().manual_seed(0)
    labels = [torch.tensor([0, -100, 2, 1]), torch.tensor([-100, -100, 3, -100]), torch.tensor([1, -100])]
    losses = [torch.rand(len(y), generator=generator) for y in labels]
    counts = count_window(
        [{"labels": y} for y in labels], COUNT, Accelerator(cpu=True), across_processes=True
    )
    assert [counts.examples.item(), counts.labelled.item()] == [10, 5]
    assert (counts.micro_batches, counts.processes) == (3, 1)

    distill = task = 0.0
    for y, loss in zip(labels, losses):
        labelled = y != -100
        means = torch.stack([loss.mean(), loss[labelled].sum() / labelled.sum().clamp(min=1)])
        scaled = means * micro_batch_scales(COUNT(y), counts, 2)
        distill, task = distill + scaled[0] / 3, task + scaled[1] / 3
    every = torch.cat(losses)
    labelled_every = every[torch.cat(labels) != -100]
    assert distill.item() == pytest.approx(every.mean().item(), rel=1e-6)
    assert task.item() == pytest.approx(labelled_every.mean().item(), rel=1e-6)


def test_scales_by_hand_equal_counts_give_ones_and_a_window_without_labels():
    counts = WindowCounts(torch.tensor(10.0), torch.tensor(4.0), micro_batches=3, processes=2)
    scales = micro_batch_scales(COUNT(torch.tensor([0, 1, -100, 2])), counts, 3)
    assert scales.tolist() == pytest.approx([4 * 6 / 10, 4 * 6 / 10, 3 * 6 / 4])
    even = WindowCounts(torch.tensor(16.0), torch.tensor(16.0), micro_batches=2, processes=2)
    assert micro_batch_scales(COUNT(torch.tensor([0, 1, 2, 3])), even, 2).tolist() == [1.0, 1.0]
    empty = WindowCounts(torch.tensor(8.0), torch.tensor(0.0), micro_batches=2, processes=1)
    assert micro_batch_scales(COUNT(torch.full((4,), -100)), empty, 2).tolist() == [1.0, 0.0]


def test_batches_without_a_labels_tensor_are_not_counted():
    accelerator = Accelerator(cpu=True)
    assert count_window([{"labels": [{"boxes": torch.zeros(1, 4)}]}], COUNT, accelerator, True) is None
    assert count_window([{"pixel_values": torch.zeros(1)}], COUNT, accelerator, True) is None


def train(tmp_path, data, method, batch, steps, **overrides):
    student, teacher = conflicting_pair()
    args = tiny_args(
        tmp_path,
        method=method,
        temperature=2.0,
        max_steps=3,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=steps,
        **overrides,
    )
    trainer = DTOKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data)
    trainer.train()
    params = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])
    return trainer, params


@pytest.mark.parametrize("method", ["fixed", "dto", "upgrad"])
def test_unevenly_labelled_micro_batches_train_like_the_whole_window(tmp_path, method):
    """8 images, 3 labelled: two micro-batches of 4 hold 3 + 0 or 2 + 1 labelled images, never equal counts,
    so the mean of micro-batch means would weigh the labelled images unequally."""
    data = partly_labelled(random_images(8), {0, 1, 2})
    whole, whole_params = train(tmp_path / "whole", data, method, batch=8, steps=1)
    split, split_params = train(tmp_path / "split", data, method, batch=4, steps=2)
    for key in ("task_loss", "distill_loss", "loss", "pi_distill"):
        assert train_logs(split, key) == pytest.approx(train_logs(whole, key), rel=1e-5, abs=1e-6), key
    assert torch.allclose(split_params, whole_params, atol=1e-5)
    start = torch.cat([p.detach().reshape(-1) for p in conflicting_pair()[0].parameters()])
    assert not torch.allclose(split_params, start, atol=1e-3)


def test_the_amortized_window_losses_are_the_whole_windows(tmp_path):
    """dto_amortized weighs each micro-batch by its own losses (an approximation under accumulation, README),
    but the window losses it logs and updates pi from are exact window means."""
    data = partly_labelled(random_images(8), {0, 1, 2})
    whole, _ = train(tmp_path / "whole", data, "dto_amortized", batch=8, steps=1)
    split, _ = train(tmp_path / "split", data, "dto_amortized", batch=4, steps=2)
    for key in ("task_loss", "distill_loss"):
        assert train_logs(split, key)[0] == pytest.approx(train_logs(whole, key)[0], rel=1e-6), key


@pytest.mark.parametrize("method", ["fixed", "dto"])
def test_a_short_last_micro_batch_counts_by_its_size(tmp_path, method):
    """10 images in batches of 4, 4 and 2 make one window of three micro-batches: it equals one batch of 10."""
    data = random_images(10)
    whole, whole_params = train(tmp_path / "whole", data, method, batch=10, steps=1)
    split, split_params = train(tmp_path / "split", data, method, batch=4, steps=3)
    assert train_logs(split, "loss") == pytest.approx(train_logs(whole, "loss"), rel=1e-5)
    assert torch.allclose(split_params, whole_params, atol=1e-5)
