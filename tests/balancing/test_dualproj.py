"""DualProj: the balancer's weights are torchjd's DualProjWeighting on the same Gramian (raw and log-gradients)."""

import pytest
import torch
from gramian_checks import check_balancer_matches_torchjd, check_nonfinite_gram_keeps_previous_weights
from torchjd.aggregation import DualProjWeighting

from hf_dtokd.balancing import DualProj


@pytest.mark.parametrize("num_objectives", [2, 3])
@pytest.mark.parametrize("log_gradients", [False, True])
def test_weights_equal_torchjd(num_objectives, log_gradients):
    balancer = DualProj(num_objectives=num_objectives, log_gradients=log_gradients)
    check_balancer_matches_torchjd(balancer, DualProjWeighting(), log_gradients)


def test_nonfinite_gram_keeps_the_previous_weights():
    check_nonfinite_gram_keeps_previous_weights(DualProj())


def test_starts_uniform():
    assert torch.allclose(DualProj(num_objectives=3).pi, torch.full((3,), 1 / 3))
