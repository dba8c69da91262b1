"""PCGrad: torchjd's PCGradWeighting as a mean, and its two-task closed form."""

import pytest
import torch
from gramian_checks import (
    check_balancer_matches_torchjd,
    check_nonfinite_gram_keeps_previous_weights,
    random_gradients,
)
from torchjd.aggregation import PCGradWeighting

from hf_dtokd.balancing import PCGrad


@pytest.mark.parametrize("log_gradients", [False, True])
def test_weights_equal_torchjd_divided_by_k(log_gradients):
    check_balancer_matches_torchjd(
        PCGrad(log_gradients=log_gradients), PCGradWeighting(), log_gradients, scale=0.5
    )


class SeededPCGrad(PCGradWeighting):
    """torchjd's PCGrad with the projection order drawn as the balancer draws it (seed + call count)."""

    def __init__(self, seed):
        super().__init__()
        self.seed, self.calls = seed, 0

    def forward(self, gramian):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + self.calls // 2)  # the check calls it twice per step
            self.calls += 1
            return super().forward(gramian)


def test_three_objectives_follow_a_seeded_order_that_leaves_the_global_generator_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    check_balancer_matches_torchjd(PCGrad(num_objectives=3, seed=7), SeededPCGrad(7), False, scale=1 / 3)
    assert torch.equal(torch.rand(1), expected_next)


def test_the_order_sequence_resumes_from_the_state():
    grads = random_gradients(3, k=3)
    first, second = PCGrad(num_objectives=3), PCGrad(num_objectives=3)
    for _ in range(4):
        first.update_from_gram(grads @ grads.T, torch.ones(3))
    second.load_state_dict(first.state_dict())
    first.update_from_gram(grads @ grads.T, torch.ones(3))
    second.update_from_gram(grads @ grads.T, torch.ones(3))
    assert torch.equal(first.pi, second.pi)


@pytest.mark.parametrize("seed", range(6))
def test_two_task_closed_form(seed):
    grads = random_gradients(seed, conflict=seed % 2 == 0)
    g11, g12, g22 = (grads @ grads.T)[0, 0], (grads @ grads.T)[0, 1], (grads @ grads.T)[1, 1]
    if g12 < 0:
        expected = ((1 - g12 / g11) * grads[0] + (1 - g12 / g22) * grads[1]) / 2
    else:
        expected = (grads[0] + grads[1]) / 2
    balancer = PCGrad()
    balancer.update_from_gram(grads @ grads.T, torch.ones(2))
    assert torch.allclose(balancer.loss_weights(torch.ones(2)).double() @ grads, expected, rtol=1e-6)


def test_nonfinite_gram_keeps_the_previous_weights():
    check_nonfinite_gram_keeps_previous_weights(PCGrad())
