import pytest
import torch

from hf_dtokd.balancing import FixedWeights


def test_fixed_weights_are_alpha_and_one_minus_alpha_on_raw_losses():
    balancer = FixedWeights(alpha=0.3)
    weights = balancer.loss_weights(torch.tensor([10.0, 0.1]))
    assert weights.tolist() == pytest.approx([0.3, 0.7])
    assert balancer.pi.tolist() == pytest.approx([0.3, 0.7])


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_unit_interval_is_refused(alpha):
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        FixedWeights(alpha=alpha)


def test_k_weights_apply_as_given_and_pi_is_their_normalisation():
    balancer = FixedWeights(weights=[0.2, 0.6, 1.2])
    assert balancer.num_objectives == 3
    assert balancer.loss_weights(torch.ones(3)).tolist() == pytest.approx([0.2, 0.6, 1.2])
    assert balancer.pi.tolist() == pytest.approx([0.1, 0.3, 0.6])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"weights": [1.0]},
        {"weights": [0.5, -0.1]},
        {"weights": [0.0, 0.0]},
        {"weights": [1.0, float("nan")]},
        {},
        {"alpha": 0.5, "weights": [0.5, 0.5]},
    ],
)
def test_bad_weights_are_refused(kwargs):
    with pytest.raises(ValueError, match="FixedWeights takes|fixed weights must be"):
        FixedWeights(**kwargs)
