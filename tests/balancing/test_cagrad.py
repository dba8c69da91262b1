"""CAGrad: torchjd's CAGradWeighting on the same Gramian; c = 0 is the mean; a missing extra is named."""

import pytest
import torch
from gramian_checks import (
    check_balancer_matches_torchjd,
    check_nonfinite_gram_keeps_previous_weights,
    random_gradients,
)
from torchjd.aggregation import CAGradWeighting

from hf_dtokd.balancing import CAGrad


@pytest.mark.parametrize("log_gradients", [False, True])
def test_weights_equal_torchjd(log_gradients):
    balancer = CAGrad(c=0.4, log_gradients=log_gradients)
    check_balancer_matches_torchjd(balancer, CAGradWeighting(c=0.4), log_gradients)


def test_radius_zero_is_the_mean():
    grads = random_gradients(1)
    balancer = CAGrad(c=0.0)
    balancer.update_from_gram(grads @ grads.T, torch.ones(2))
    assert torch.allclose(
        balancer.loss_weights(torch.ones(2)).double(), torch.tensor([0.5, 0.5]).double(), atol=1e-6
    )


def test_negative_radius_is_refused():
    with pytest.raises(ValueError, match="cagrad_c"):
        CAGrad(c=-0.1)


def test_missing_optional_dependency_names_the_extra(monkeypatch):
    import torchjd._mixins

    real = torchjd._mixins.find_spec
    monkeypatch.setattr(torchjd._mixins, "find_spec", lambda name: None if name == "cvxpy" else real(name))
    with pytest.raises(ImportError, match=r"hf-dtokd\[cagrad\]"):
        CAGrad()


def test_nonfinite_gram_keeps_the_previous_weights():
    check_nonfinite_gram_keeps_previous_weights(CAGrad())
