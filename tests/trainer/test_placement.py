"""The placement is chosen once from the balancer, and the accumulation window's state opens and closes."""

import torch

from hf_dtokd import DTOKDTrainer
from hf_dtokd.trainer.placement import (
    AccumulationWindow,
    ParameterGradients,
    RepresentationGradients,
    WeightedLoss,
)
from testing_utils import random_images, tiny_args, tiny_resnet, tiny_vit


def trainer(tmp_path, **overrides):
    return DTOKDTrainer(
        model=tiny_vit(),
        teacher_model=tiny_resnet(),
        train_dataset=random_images(16),
        args=tiny_args(tmp_path, **overrides),
    )


def test_each_method_gets_its_placement(tmp_path):
    assert isinstance(trainer(tmp_path / "a", method="dto").placement, ParameterGradients)
    assert isinstance(trainer(tmp_path / "b", method="dot").placement, ParameterGradients)
    for method in ("fixed", "dto_amortized", "uncertainty"):
        assert isinstance(trainer(tmp_path / method, method=method).placement, WeightedLoss), method
    representation = trainer(tmp_path / "r", method="dto", gradient_placement="representation").placement
    assert isinstance(representation, RepresentationGradients) and representation.pi_per_micro_batch
    assert representation.layer == "logits" and representation.gradients is None


def test_the_window_opens_with_zero_losses_and_closes_keeping_the_previous_losses():
    window = AccumulationWindow(previous_losses=torch.ones(2))
    model = torch.nn.Linear(2, 2)
    window.open(model, 3, torch.device("cpu"))
    assert window.is_open and window.model is model and torch.equal(window.losses, torch.zeros(3))
    window.batches.append(({}, None, torch.zeros(1), None))
    window.counts = object()
    window.close()
    assert not window.is_open and window.counts is None and torch.equal(window.previous_losses, torch.ones(2))
    window.open(model, 3, torch.device("cpu"))
    assert window.batches == []
