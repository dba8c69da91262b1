"""UPGrad: the balancer's weights are torchjd's UPGradWeighting on the same Gramian (raw and log-gradients)."""

import pytest
import torch
from gramian_checks import check_balancer_matches_torchjd, check_nonfinite_gram_keeps_previous_weights
from torchjd.aggregation import UPGradWeighting

from hf_dtokd.balancing import UPGrad


@pytest.mark.parametrize("num_objectives", [2, 3])
@pytest.mark.parametrize("log_gradients", [False, True])
def test_weights_equal_torchjd(num_objectives, log_gradients):
    balancer = UPGrad(num_objectives=num_objectives, log_gradients=log_gradients)
    check_balancer_matches_torchjd(balancer, UPGradWeighting(), log_gradients)


def test_nonfinite_gram_keeps_the_previous_weights():
    check_nonfinite_gram_keeps_previous_weights(UPGrad())


def test_starts_uniform():
    assert torch.allclose(UPGrad(num_objectives=3).pi, torch.full((3,), 1 / 3))


def test_the_update_never_conflicts_with_an_objective():
    from gramian_checks import random_gradients

    for seed in range(5):
        grads = random_gradients(seed, k=3)
        balancer = UPGrad(num_objectives=3)
        balancer.update_from_gram(grads @ grads.T, torch.ones(3))
        direction = balancer.loss_weights(torch.ones(3)).double() @ grads
        assert (grads @ direction >= -1e-6 * direction.norm() * grads.norm(dim=1)).all()
