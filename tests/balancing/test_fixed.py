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
