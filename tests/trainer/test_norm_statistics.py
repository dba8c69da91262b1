"""The amortized methods' look-ahead re-forward measures, it does not train: BatchNorm statistics as after one
training forward."""

import copy

import pytest
import torch

from hf_dtokd import DTOKDTrainer
from hf_dtokd.trainer.norm_statistics import preserved_running_statistics
from testing_utils import random_images, tiny_args, tiny_resnet, whole_batch


def norm_buffers(model):
    return {
        name: buffer.clone()
        for name, buffer in model.named_buffers()
        if "running" in name or "tracked" in name
    }


@pytest.mark.parametrize("method", ["dto_amortized", "famo"])
def test_a_same_batch_look_ahead_step_leaves_batchnorm_as_the_training_forward_did(tmp_path, method):
    student, data = tiny_resnet(seed=4), random_images(16)
    alone = copy.deepcopy(student).train()
    with torch.no_grad():
        alone(pixel_values=whole_batch(data)[0])  # the training forward, once
    expected = norm_buffers(alone)
    assert expected  # a BatchNorm student
    trainer = DTOKDTrainer(
        model=student,
        teacher_model=tiny_resnet(),
        train_dataset=data,
        args=tiny_args(tmp_path, method=method, look_ahead="same_batch"),
    )
    trainer.train()
    assert trainer.balancer.xi.abs().sum() > 0  # the look-ahead ran and moved the trade-off
    got = norm_buffers(trainer.model)
    for name, value in expected.items():
        if name.endswith("num_batches_tracked"):
            assert int(got[name]) == 1, name
        else:
            assert torch.allclose(got[name], value, atol=1e-6), name


def test_the_body_runs_in_train_mode_and_the_statistics_come_back():
    norm = torch.nn.BatchNorm1d(3)
    before = norm_buffers(norm)
    with preserved_running_statistics(norm):
        out = norm(torch.randn(8, 3) * 5 + 2)
        assert int(norm.num_batches_tracked) == 1  # the forward did update them
    assert torch.allclose(out.mean(0), torch.zeros(3), atol=1e-5)  # batch statistics, as in training
    for name, value in norm_buffers(norm).items():
        assert torch.equal(value, before[name]), name
