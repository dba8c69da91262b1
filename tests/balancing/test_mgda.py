"""MGDA: the balancer's weights are torchjd's MGDAWeighting on the same Gramian (raw and log-gradients)."""

import pytest
import torch
from gramian_checks import check_balancer_matches_torchjd, check_nonfinite_gram_keeps_previous_weights
from torchjd.aggregation import MGDAWeighting

from hf_dtokd.balancing import MGDA


@pytest.mark.parametrize("num_objectives", [2, 3])
@pytest.mark.parametrize("log_gradients", [False, True])
def test_weights_equal_torchjd(num_objectives, log_gradients):
    balancer = MGDA(num_objectives=num_objectives, log_gradients=log_gradients)
    check_balancer_matches_torchjd(balancer, MGDAWeighting(), log_gradients)


def test_nonfinite_gram_keeps_the_previous_weights():
    check_nonfinite_gram_keeps_previous_weights(MGDA())


def test_starts_uniform():
    assert torch.allclose(MGDA(num_objectives=3).pi, torch.full((3,), 1 / 3))


def test_two_task_mgda_is_the_dto_closed_form_on_raw_gradients():
    from gramian_checks import random_gradients

    from hf_dtokd.balancing import dto_closed_form

    for seed in range(5):
        grads = random_gradients(seed)
        gram = grads @ grads.T
        balancer = MGDA()
        balancer.update_from_gram(gram, torch.ones(2))
        # Frank-Wolfe stops at a 1e-3 step: the weights agree with the closed form to that order
        assert torch.allclose(balancer.pi.double(), dto_closed_form(gram).double(), atol=2e-3)
