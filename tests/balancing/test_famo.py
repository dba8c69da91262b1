"""FAMO / amortized DTO-KD: one update against a hand computation, and its guards."""

import math

import pytest
import torch

from hf_dtokd.balancing import FAMO


def test_starts_uniform_and_weights_follow_the_log_loss_rule():
    famo = FAMO()
    assert torch.allclose(famo.pi, torch.tensor([0.5, 0.5]))
    losses = torch.tensor([0.2, 2.0])
    weights = famo.loss_weights(losses)
    # backward of sum_i (pi_i / c) log L_i == backward of sum_i w_i L_i with w_i = pi_i / (c L_i)
    c = 0.5 / 0.2 + 0.5 / 2.0
    assert torch.allclose(weights, torch.tensor([0.5 / 0.2 / c, 0.5 / 2.0 / c]))
    assert float(weights.sum()) == pytest.approx(1.0)


def test_one_update_equals_a_hand_computed_adam_step():
    famo = FAMO(lr=0.025, weight_decay=0.01)
    before, after = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 1.9])
    famo.update(before, after)
    delta = [math.log(1.0) - math.log(0.5), math.log(2.0) - math.log(1.9)]
    mean = 0.5 * delta[0] + 0.5 * delta[1]
    grad = [0.5 * (delta[0] - mean), 0.5 * (delta[1] - mean)]
    # first Adam step from xi = 0 (weight decay adds 0.01 * 0): m_hat = g, v_hat = g^2
    expected_xi = [-0.025 * g / (abs(g) + 1e-8) for g in grad]
    # float32 arithmetic: a few ulps of 0.025 (one ulp is 1.9e-9), not closer
    assert famo.xi.detach().tolist() == pytest.approx(expected_xi, rel=4 * torch.finfo(torch.float32).eps)
    # distillation fell faster, so it loses weight
    assert famo.pi[0] < 0.5


def test_second_update_uses_adam_moments_and_weight_decay():
    famo = FAMO(lr=0.1, weight_decay=0.5)
    pairs = [
        (torch.tensor([1.0, 1.0]), torch.tensor([0.8, 0.95])),
        (torch.tensor([0.8, 0.95]), torch.tensor([0.79, 0.7])),
    ]
    xi, m, v = [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]
    for step, (b, a) in enumerate(pairs, start=1):
        pi = torch.softmax(torch.tensor(xi), 0).tolist()
        delta = [math.log(b[i]) - math.log(a[i]) for i in range(2)]
        mean = sum(p * d for p, d in zip(pi, delta))
        for i in range(2):
            g = pi[i] * (delta[i] - mean) + 0.5 * xi[i]
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.999 * v[i] + 0.001 * g * g
            xi[i] -= 0.1 * (m[i] / (1 - 0.9**step)) / (math.sqrt(v[i] / (1 - 0.999**step)) + 1e-8)
        famo.update(b, a)
    assert famo.xi.detach().tolist() == pytest.approx(xi, abs=1e-7)


def test_nonfinite_delta_skips_the_update_and_counts():
    famo = FAMO()
    assert famo.update(torch.tensor([1.0, float("nan")]), torch.tensor([0.5, 1.0])) is False
    assert famo.update(torch.tensor([1.0, 1.0]), torch.tensor([float("inf"), 1.0])) is False
    assert torch.equal(famo.xi.detach(), torch.zeros(2))
    assert int(famo.nonfinite_events) == 2


def test_zero_loss_is_finite_through_eps():
    famo = FAMO(eps=1e-8)
    assert torch.isfinite(famo.loss_weights(torch.tensor([0.0, 1.0]))).all()
    assert famo.update(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.9]))


def test_state_dict_round_trip_restores_xi_and_moments():
    famo = FAMO()
    famo.update(torch.tensor([1.0, 2.0]), torch.tensor([0.5, 1.9]))
    restored = FAMO()
    restored.load_state_dict(famo.state_dict())
    for f in (famo, restored):
        f.update(torch.tensor([0.7, 1.5]), torch.tensor([0.6, 1.2]))
    assert torch.equal(famo.xi.detach(), restored.xi.detach())


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"lr": 0.0}, "learning rate"), ({"weight_decay": -1.0}, "weight decay")]
)
def test_bad_hyper_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FAMO(**kwargs)
