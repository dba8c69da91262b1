"""Segmentation losses against independent computations: the per-pixel KL written pixel by pixel, CWD as the
authors' released code writes it, the task loss as transformers' SegFormer computes its own loss."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_dtokd.losses import channel_kd_loss, pixel_kd_loss, resample_logits, segmentation_cross_entropy
from testing_utils import tiny_segformer


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def logits(seed, shape=(2, 4, 5, 6)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_pixel_kd_is_the_mean_over_pixels_of_the_class_kl_times_t_squared(temperature):
    s, t = logits(0), logits(1)
    total, pixels = 0.0, 0
    for b in range(2):
        for i in range(5):
            for j in range(6):
                p = softmax(t[b, :, i, j].numpy() / temperature, 0)
                q = softmax(s[b, :, i, j].numpy() / temperature, 0)
                total += float((p * np.log(p / q)).sum())
                pixels += 1
    expected = temperature**2 * total / pixels
    assert pixel_kd_loss(s, t, temperature).item() == pytest.approx(expected, rel=1e-5)


def cwd_as_released(preds_s: torch.Tensor, preds_t: torch.Tensor, tau: float) -> torch.Tensor:
    """Channel-wise distillation as the authors' code (irfanICMLL/TorchDistiller, mmrazor's ChannelWiseDivergence)
    writes it: rows of W * H positions per channel, summed, times tau^2, over C * N."""
    n, c, h, w = preds_s.shape
    softmax_pred_t = F.softmax(preds_t.reshape(-1, w * h) / tau, dim=1)
    logsoftmax = torch.nn.LogSoftmax(dim=1)
    loss = torch.sum(
        softmax_pred_t * logsoftmax(preds_t.reshape(-1, w * h) / tau)
        - softmax_pred_t * logsoftmax(preds_s.reshape(-1, w * h) / tau)
    ) * (tau**2)
    return loss / (c * n)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_channel_kd_equals_the_released_cwd(temperature):
    s, t = logits(2), logits(3)
    expected = cwd_as_released(s, t, temperature)
    assert channel_kd_loss(s, t, temperature).item() == pytest.approx(expected.item(), rel=1e-5)


def test_both_kd_losses_vanish_when_the_student_matches_the_teacher_and_have_gradients_otherwise():
    t = logits(4)
    assert pixel_kd_loss(t.clone(), t, 2.0).item() == pytest.approx(0.0, abs=1e-9)
    assert channel_kd_loss(t.clone(), t, 2.0).item() == pytest.approx(0.0, abs=1e-9)
    s = logits(5).requires_grad_()
    (pixel_kd_loss(s, t, 2.0) + channel_kd_loss(s, t, 2.0)).backward()
    assert s.grad.abs().sum() > 0


def test_the_task_loss_is_segformers_own_loss_with_the_ignore_index():
    model = tiny_segformer(0).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 4, (2, 32, 32), generator=torch.Generator().manual_seed(1))
    labels[0, :5] = 255  # ignored rows
    with torch.no_grad():
        outputs = model(pixel_values=pixels, labels=labels)  # transformers upsamples and ignores 255 itself
    assert outputs.logits.shape[-2:] == (8, 8)  # a quarter of the input: the loss resamples
    ours = segmentation_cross_entropy(outputs.logits, labels, ignore_index=255)
    assert ours.item() == pytest.approx(outputs.loss.item(), rel=1e-6)


def test_every_pixel_ignored_gives_a_zero_loss_with_a_zero_gradient():
    s = logits(6).float().requires_grad_()
    loss = segmentation_cross_entropy(s, torch.full((2, 10, 12), 255), ignore_index=255)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(s.grad).all() and s.grad.abs().sum() == 0


def test_resampling_is_bilinear_to_the_label_size_and_a_no_op_at_that_size():
    x = logits(7).float()
    assert torch.equal(resample_logits(x, (5, 6)), x)
    # bilinear with half-pixel centres, from its definition: a ramp along the width stays the ramp read at
    # source coordinate (j + 0.5) * 6 / 12 - 0.5, clamped to the edge pixels
    ramp = torch.arange(6.0).expand(1, 2, 5, 6)
    up = resample_logits(ramp, (10, 12))
    expected = ((torch.arange(12.0) + 0.5) * 6 / 12 - 0.5).clamp(0, 5)
    assert torch.allclose(up, expected.expand(1, 2, 10, 12), atol=1e-6)


def test_logits_of_different_shapes_are_refused_naming_the_fix():
    with pytest.raises(ValueError, match="resample them to the label size"):
        pixel_kd_loss(logits(0), logits(1, (2, 5, 5, 6)), 1.0)
    with pytest.raises(ValueError, match="teacher_label_indices"):
        channel_kd_loss(logits(0), logits(1, (2, 4, 4, 6)), 1.0)
