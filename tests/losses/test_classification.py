"""Task and logit-KD losses pinned against independent numpy computations."""

import numpy as np
import pytest
import torch

from hf_dtokd.losses import logit_kd_loss, task_cross_entropy


def np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_logit_kd_matches_temperature_scaled_kl():
    rng = np.random.default_rng(0)
    zs, zt = rng.standard_normal((5, 7)), rng.standard_normal((5, 7)) * 3
    temperature = 2.5
    ps, pt = np_softmax(zs / temperature), np_softmax(zt / temperature)
    expected = temperature**2 * np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=1))
    got = logit_kd_loss(
        torch.tensor(zs, dtype=torch.float32), torch.tensor(zt, dtype=torch.float32), temperature
    )
    assert float(got) == pytest.approx(expected, rel=1e-5)
    assert got.dtype == torch.float32


def test_logit_kd_is_zero_for_identical_logits_and_float32_under_bf16():
    z = torch.randn(3, 4).bfloat16()
    loss = logit_kd_loss(z, z.clone(), 4.0)
    assert float(loss) == 0.0 and loss.dtype == torch.float32


def test_logit_kd_refuses_mismatched_label_spaces():
    with pytest.raises(ValueError, match="teacher_label_indices"):
        logit_kd_loss(torch.zeros(2, 3), torch.zeros(2, 5), 1.0)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_with_label_smoothing(smoothing):
    rng = np.random.default_rng(1)
    z, y = rng.standard_normal((6, 5)), rng.integers(0, 5, 6)
    log_p = np.log(np_softmax(z))
    target = np.full((6, 5), smoothing / 5)
    target[np.arange(6), y] += 1 - smoothing
    expected = -np.mean(np.sum(target * log_p, axis=1))
    got = task_cross_entropy(torch.tensor(z, dtype=torch.float32), torch.tensor(y), smoothing)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_cross_entropy_leaves_out_unlabelled_examples():
    rng = np.random.default_rng(2)
    z, y = rng.standard_normal((6, 5)), rng.integers(0, 5, 6)
    y[[1, 4]] = -100
    kept = [0, 2, 3, 5]
    expected = -np.mean(np.log(np_softmax(z))[kept, y[kept]])
    got = task_cross_entropy(torch.tensor(z, dtype=torch.float32), torch.tensor(y))
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_cross_entropy_of_an_unlabelled_batch_is_zero_with_zero_gradient():
    z = torch.randn(4, 5, requires_grad=True)
    loss = task_cross_entropy(z, torch.full((4,), -100), label_smoothing=0.1)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(z.grad) == 0
