"""Uncertainty weighting: the weights exp(-s)/2 and one Adam step on s against a hand computation."""

import math

import pytest
import torch

from hf_dtokd.balancing import UncertaintyWeighting


def test_starts_at_one_half_each_and_pi_is_the_normalised_weight():
    balancer = UncertaintyWeighting(num_objectives=3)
    assert torch.allclose(balancer.loss_weights(torch.ones(3)), torch.full((3,), 0.5))
    assert torch.allclose(balancer.pi, torch.full((3,), 1 / 3))


def test_two_updates_equal_hand_computed_adam_steps():
    balancer = UncertaintyWeighting(lr=0.1, weight_decay=0.2)
    windows = [torch.tensor([0.4, 3.0]), torch.tensor([0.3, 2.5])]
    s, m, v = [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]
    for step, losses in enumerate(windows, start=1):
        for i in range(2):
            g = 0.5 * (1 - math.exp(-s[i]) * losses[i].item()) + 0.2 * s[i]
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.999 * v[i] + 0.001 * g * g
            s[i] -= 0.1 * (m[i] / (1 - 0.9**step)) / (math.sqrt(v[i] / (1 - 0.999**step)) + 1e-8)
        balancer.observe_window(losses)
    assert balancer.log_variance.detach().tolist() == pytest.approx(s, abs=1e-6)
    weights = balancer.loss_weights(torch.ones(2))
    assert weights.tolist() == pytest.approx([0.5 * math.exp(-x) for x in s], rel=1e-6)
    # the small loss gets the larger weight
    assert weights[0] > weights[1]


def test_nonfinite_losses_skip_the_update_and_count():
    balancer = UncertaintyWeighting()
    balancer.observe_window(torch.tensor([float("nan"), 1.0]))
    assert torch.equal(balancer.log_variance.detach(), torch.zeros(2))
    assert int(balancer.nonfinite_events) == 1


def test_state_round_trip_and_bad_hyper_parameters():
    balancer = UncertaintyWeighting()
    balancer.observe_window(torch.tensor([0.5, 2.0]))
    other = UncertaintyWeighting()
    other.load_state_dict(balancer.state_dict())
    balancer.observe_window(torch.tensor([0.4, 1.0]))
    other.observe_window(torch.tensor([0.4, 1.0]))
    assert torch.equal(balancer.log_variance, other.log_variance)
    with pytest.raises(ValueError, match="learning rate"):
        UncertaintyWeighting(lr=0.0)
    with pytest.raises(ValueError, match="weight decay"):
        UncertaintyWeighting(weight_decay=-1.0)
