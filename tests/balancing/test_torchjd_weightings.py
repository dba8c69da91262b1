"""The torchjd-backed Gram methods: each balancer's weights are torchjd's ``Weighting`` on the same Gramian
(raw and log-gradients), a non-finite Gram keeps the previous weights, and every method starts uniform.

Method-specific properties live beside the method: ``test_mgda.py``, ``test_upgrad.py``, ``test_pcgrad.py``,
``test_cagrad.py``.
"""

import pytest
import torch
from gramian_checks import check_balancer_matches_torchjd, check_nonfinite_gram_keeps_previous_weights
from torchjd.aggregation import (
    AlignedMTLWeighting,
    DualProjWeighting,
    IMTLGWeighting,
    MGDAWeighting,
    UPGradWeighting,
)

from hf_dtokd.balancing import IMTLG, MGDA, AlignedMTL, DualProj, UPGrad

METHODS = {
    "aligned_mtl": (AlignedMTL, AlignedMTLWeighting),
    "dualproj": (DualProj, DualProjWeighting),
    "imtl_g": (IMTLG, IMTLGWeighting),
    "mgda": (MGDA, MGDAWeighting),
    "upgrad": (UPGrad, UPGradWeighting),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("num_objectives", [2, 3])
@pytest.mark.parametrize("log_gradients", [False, True])
def test_weights_equal_torchjd(method, num_objectives, log_gradients):
    balancer_class, weighting = METHODS[method]
    balancer = balancer_class(num_objectives=num_objectives, log_gradients=log_gradients)
    check_balancer_matches_torchjd(balancer, weighting(), log_gradients)


@pytest.mark.parametrize("method", METHODS)
def test_nonfinite_gram_keeps_the_previous_weights(method):
    check_nonfinite_gram_keeps_previous_weights(METHODS[method][0]())


@pytest.mark.parametrize("method", METHODS)
def test_starts_uniform(method):
    assert torch.allclose(METHODS[method][0](num_objectives=3).pi, torch.full((3,), 1 / 3))
