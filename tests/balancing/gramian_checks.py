"""Shared checks for the torchjd-backed balancers: their weights are torchjd's on the same Gramian."""

from __future__ import annotations

import numpy as np
import torch

from hf_dtokd.balancing.gramian import GramianBalancer

EPS = 1e-8


def random_gradients(seed: int, k: int = 2, dim: int = 7, conflict: bool = True) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    grads = rng.standard_normal((k, dim)) * rng.uniform(0.1, 10.0, size=(k, 1))
    if conflict:  # make the first two point partly against each other
        grads[1] -= 1.5 * grads[0] * (grads[0] @ grads[1] + abs(grads[0] @ grads[0])) / (grads[0] @ grads[0])
    return torch.from_numpy(grads)


def raw_loss_weights_from_torchjd(
    weighting, grads: torch.Tensor, losses: torch.Tensor, log_gradients: bool, scale: float = 1.0
) -> torch.Tensor:
    """What the trainer must apply, written from torchjd's weighting and the definitions in gramian.py."""
    shifted = losses.double() + EPS
    vectors = grads / shifted[:, None] if log_gradients else grads
    p = scale * weighting(vectors @ vectors.T).double()
    if not log_gradients:
        return p
    w = p / shifted
    return w * p.sum() / w.sum()


def check_balancer_matches_torchjd(
    balancer: GramianBalancer, weighting, log_gradients: bool, scale: float = 1.0
):
    """Weights and pi of ``balancer`` on random Grams equal torchjd's, on raw or log-gradients."""
    for seed in range(5):
        grads = random_gradients(seed, k=balancer.num_objectives)
        losses = torch.tensor([0.3, 2.0, 0.9][: balancer.num_objectives])
        pi = balancer.update_from_gram(grads @ grads.T, losses)
        expected = raw_loss_weights_from_torchjd(weighting, grads, losses, log_gradients, scale)
        assert torch.allclose(balancer.loss_weights(losses).double(), expected, rtol=1e-5, atol=1e-7), seed
        p = (
            scale
            * weighting(
                (grads / (losses.double() + EPS)[:, None]) @ (grads / (losses.double() + EPS)[:, None]).T
                if log_gradients
                else grads @ grads.T
            ).double()
        )
        assert torch.allclose(pi.double(), p / p.sum(), atol=1e-6), seed
    assert int(balancer.nonfinite_events) == 0


def check_nonfinite_gram_keeps_previous_weights(balancer: GramianBalancer):
    grads = random_gradients(0, k=balancer.num_objectives)
    losses = torch.ones(balancer.num_objectives)
    balancer.update_from_gram(grads @ grads.T, losses)
    before = balancer.loss_weights(losses).clone()
    bad = grads @ grads.T
    bad[0, 0] = float("nan")
    balancer.update_from_gram(bad, losses)
    assert torch.equal(balancer.loss_weights(losses), before)
    assert int(balancer.nonfinite_events) == 1
