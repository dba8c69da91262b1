"""Exact DTO-KD: the closed form against brute force, its properties, and its edge cases."""

import numpy as np
import pytest
import torch

from hf_dtokd.balancing import DTOExact, dto_closed_form, log_gram

GRID = np.linspace(0.0, 1.0, 200_001)


def brute_force_pi(gram: np.ndarray) -> tuple[float, float]:
    """argmin and min over a fine grid of ||pi a_d + (1 - pi) a_t||^2 written with the Gram entries."""
    g11, g12, g22 = gram[0, 0], gram[0, 1], gram[1, 1]
    values = GRID**2 * g11 + 2 * GRID * (1 - GRID) * g12 + (1 - GRID) ** 2 * g22
    best = int(np.argmin(values))
    return float(GRID[best]), float(values[best])


def gram_of(a_d: np.ndarray, a_t: np.ndarray) -> np.ndarray:
    stacked = np.stack([a_d, a_t])
    return stacked @ stacked.T


def norm_sq(gram: np.ndarray, pi_d: float) -> float:
    w = np.array([pi_d, 1 - pi_d])
    return float(w @ gram @ w)


@pytest.mark.parametrize("seed", range(40))
def test_closed_form_matches_brute_force_on_random_grams(seed):
    rng = np.random.default_rng(seed)
    dim = int(rng.integers(2, 50))
    a_d = rng.standard_normal(dim) * 10 ** rng.uniform(-3, 3)
    a_t = rng.standard_normal(dim) * 10 ** rng.uniform(-3, 3)
    gram = gram_of(a_d, a_t)
    pi = dto_closed_form(torch.from_numpy(gram)).double().numpy()
    assert pi.sum() == pytest.approx(1.0)
    grid_pi, grid_min = brute_force_pi(gram)
    scale = gram[0, 0] + gram[1, 1]
    assert norm_sq(gram, pi[0]) <= grid_min + 1e-9 * scale
    curvature = gram[0, 0] + gram[1, 1] - 2 * gram[0, 1]
    if curvature > 1e-3 * scale:  # a well-conditioned minimum: the argmin itself must agree
        assert pi[0] == pytest.approx(grid_pi, abs=1e-4)


def test_conflicting_gradients_give_an_interior_pi_with_equal_contribution():
    a_d = np.array([1.0, 0.2, 0.0])
    a_t = np.array([-0.5, 1.0, 0.3])
    assert a_d @ a_t < 0
    gram = gram_of(a_d, a_t)
    pi_d = float(dto_closed_form(torch.from_numpy(gram))[0])
    assert 0.0 < pi_d < 1.0
    assert pi_d == pytest.approx(brute_force_pi(gram)[0], abs=1e-5)
    g_star = pi_d * a_d + (1 - pi_d) * a_t
    assert g_star @ a_d == pytest.approx(g_star @ a_t, rel=1e-5)
    assert g_star @ a_d == pytest.approx(g_star @ g_star, rel=1e-5)
    assert np.linalg.norm(g_star) <= min(np.linalg.norm(a_d), np.linalg.norm(a_t)) + 1e-12


@pytest.mark.parametrize(
    ("a_d", "a_t", "expected_pi_d"),
    [
        ([1.0, 0.0], [3.0, 0.5], 1.0),  # aligned, distillation shorter: vertex on distillation
        ([3.0, 0.5], [1.0, 0.0], 0.0),  # aligned, task shorter: vertex on task
        ([0.0, 0.0], [1.0, 2.0], 1.0),  # zero distillation gradient: all weight on it, g* = 0
        ([1.0, 2.0], [0.0, 0.0], 0.0),  # zero task gradient
        ([1.0, 2.0], [1.0, 2.0], 0.5),  # identical gradients: degenerate denominator
        ([0.0, 0.0], [0.0, 0.0], 0.5),  # both zero
    ],
)
def test_vertex_and_degenerate_cases(a_d, a_t, expected_pi_d):
    gram = gram_of(np.array(a_d), np.array(a_t))
    pi = dto_closed_form(torch.from_numpy(gram))
    assert float(pi[0]) == pytest.approx(expected_pi_d)
    assert torch.isfinite(pi).all()


def test_nearly_identical_gradients_are_treated_as_degenerate():
    a = np.array([1.0, 2.0, 3.0])
    gram = gram_of(a, a * (1 + 1e-12))
    assert float(dto_closed_form(torch.from_numpy(gram))[0]) == 0.5


def test_log_gram_is_invariant_to_loss_scale():
    rng = np.random.default_rng(0)
    g_d, g_t = rng.standard_normal(7), rng.standard_normal(7)
    losses = torch.tensor([0.3, 2.0])
    pi = dto_closed_form(log_gram(torch.from_numpy(gram_of(g_d, g_t)), losses))
    # multiplying L_d by 16 (as T^2 does) multiplies g_d by 16 too: the log-gradient is unchanged
    scaled = dto_closed_form(
        log_gram(torch.from_numpy(gram_of(16 * g_d, g_t)), losses * torch.tensor([16.0, 1.0]))
    )
    assert torch.allclose(pi, scaled, atol=1e-6)


def test_nonfinite_gram_keeps_previous_pi_and_counts():
    balancer = DTOExact()
    good = torch.from_numpy(gram_of(np.array([1.0, 0.2]), np.array([-0.5, 1.0])))
    losses = torch.tensor([0.5, 1.5])
    first = balancer.update_from_gram(good, losses).clone()
    for bad_gram, bad_losses in [
        (good * float("nan"), losses),
        (good, torch.tensor([float("inf"), 1.0])),
        (torch.full((2, 2), float("inf"), dtype=torch.float64), losses),
    ]:
        pi = balancer.update_from_gram(bad_gram, bad_losses)
        assert torch.equal(pi, first)
    assert int(balancer.nonfinite_events) == 3


def test_zero_loss_gives_finite_weights():
    balancer = DTOExact(eps=1e-8)
    gram = torch.zeros(2, 2, dtype=torch.float64)
    gram[1, 1] = 4.0  # distillation gradient is zero (student == teacher)
    losses = torch.tensor([0.0, 1.0])
    pi = balancer.update_from_gram(gram, losses)
    weights = balancer.loss_weights(losses)
    assert torch.isfinite(pi).all() and torch.isfinite(weights).all()
    assert float(pi[0]) == 1.0  # all weight on the zero gradient: g* = 0
    assert int(balancer.nonfinite_events) == 0


def test_unknown_rescale_rule_is_refused():
    with pytest.raises(ValueError, match="valid values: famo, none"):
        DTOExact(rescale="sum")


def simplex_grid(step: float = 0.002) -> np.ndarray:
    values = np.arange(0.0, 1.0 + step / 2, step)
    a, b = np.meshgrid(values, values, indexing="ij")
    keep = a + b <= 1.0 + 1e-12
    return np.stack([a[keep], b[keep], np.clip(1.0 - a[keep] - b[keep], 0.0, None)], axis=1)


@pytest.mark.parametrize("seed", range(8))
def test_three_objectives_min_norm_point_beats_a_brute_force_grid(seed):
    from hf_dtokd.balancing import min_norm_weights

    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((3, int(rng.integers(2, 12)))) * rng.uniform(0.2, 5.0, size=(3, 1))
    gram = vectors @ vectors.T
    pi = min_norm_weights(torch.from_numpy(gram)).numpy()
    assert pi.min() >= 0 and pi.sum() == pytest.approx(1.0)
    grid = simplex_grid()
    grid_values = np.einsum("ni,ij,nj->n", grid, gram, grid)
    assert float(pi @ gram @ pi) <= grid_values.min() + 1e-9 * np.trace(gram)
    best = grid[int(np.argmin(grid_values))]
    assert float(best @ gram @ best) - float(pi @ gram @ pi) < 1e-3 * np.trace(gram)


def test_three_objectives_balancer_uses_log_gradients_and_the_famo_rescale():
    rng = np.random.default_rng(4)
    grads = torch.from_numpy(rng.standard_normal((3, 6)))
    losses = torch.tensor([0.5, 2.0, 1.0])
    balancer = DTOExact(num_objectives=3)
    balancer.update_from_gram(grads @ grads.T, losses)
    from hf_dtokd.balancing import min_norm_weights

    log_grads = grads / (losses.double() + 1e-8)[:, None]
    p = min_norm_weights(log_grads @ log_grads.T)
    assert torch.allclose(balancer.pi.double(), p, atol=1e-6)
    w = p / (losses.double() + 1e-8)
    assert torch.allclose(balancer.loss_weights(losses).double(), w / w.sum(), atol=1e-6)


def test_three_identical_gradients_and_all_zero_gradients():
    from hf_dtokd.balancing import min_norm_weights

    assert torch.allclose(
        min_norm_weights(torch.zeros(3, 3, dtype=torch.float64)), torch.full((3,), 1 / 3).double()
    )
    v = torch.tensor([[1.0, 2.0]], dtype=torch.float64).repeat(3, 1)
    pi = min_norm_weights(v @ v.T)
    assert pi.sum().item() == pytest.approx(1.0) and (pi >= 0).all()
