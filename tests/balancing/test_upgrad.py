"""UPGrad beyond the shared torchjd checks (test_torchjd_weightings.py): its update never conflicts with an objective."""

import torch

from hf_dtokd.balancing import UPGrad


def test_the_update_never_conflicts_with_an_objective():
    from gramian_checks import random_gradients

    for seed in range(5):
        grads = random_gradients(seed, k=3)
        balancer = UPGrad(num_objectives=3)
        balancer.update_from_gram(grads @ grads.T, torch.ones(3))
        direction = balancer.loss_weights(torch.ones(3)).double() @ grads
        assert (grads @ direction >= -1e-6 * direction.norm() * grads.norm(dim=1)).all()
