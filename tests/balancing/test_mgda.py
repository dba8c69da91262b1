"""MGDA beyond the shared torchjd checks (test_torchjd_weightings.py): with two objectives it is DTO-KD's closed form on raw gradients."""

import torch

from hf_dtokd.balancing import MGDA


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
