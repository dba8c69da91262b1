"""Each projector's loss against a computation written out here; the orthogonal one stays orthogonal."""

import torch

from hf_dtokd.signals.projectors import LinearProjector, MoKDStyleProjector, VkDProjector, build_projector


def layer_norm_channels(t, eps=1e-5):
    mean = t.mean(dim=1, keepdim=True)
    var = t.var(dim=1, unbiased=False, keepdim=True)
    return (t - mean) / torch.sqrt(var + eps)


def smooth_l1(a, b):
    d = (a - b).abs()
    return torch.where(d < 1, 0.5 * d**2, d - 0.5).mean()


def test_linear_projector_is_a_1x1_convolution_and_mse():
    torch.manual_seed(0)
    proj, s, t = LinearProjector(3, 5), torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    w, b = proj.proj.weight[:, :, 0, 0], proj.proj.bias
    projected = torch.einsum("oc,bchw->bohw", w, s) + b[None, :, None, None]
    assert torch.allclose(proj.loss(s, t), ((projected - t) ** 2).mean(), atol=1e-6)


def test_vkd_projector_is_orthogonal_before_and_after_training_and_uses_smooth_l1_on_normed_teacher():
    torch.manual_seed(0)
    proj, s, t = VkDProjector(3, 6), torch.randn(2, 3, 4, 4), 5 * torch.randn(2, 6, 4, 4) + 2
    w = proj.proj.weight  # (6, 3)
    projected = torch.einsum("oc,bchw->bohw", w, s)
    assert torch.allclose(proj.loss(s, t), smooth_l1(projected, layer_norm_channels(t)), atol=1e-6)
    optimizer = torch.optim.SGD(proj.parameters(), lr=0.5)
    before = w.detach().clone()
    for _ in range(5):
        optimizer.zero_grad()
        proj.loss(s, t).backward()
        optimizer.step()
    w = proj.proj.weight
    assert not torch.allclose(w, before)
    assert torch.allclose(w.T @ w, torch.eye(3), atol=1e-5)  # orthonormal columns (C_s <= C_t)


def test_mokd_style_lifts_the_teacher_by_a_fixed_isometry():
    torch.manual_seed(0)
    proj, s, t = MoKDStyleProjector(3, 4), torch.randn(2, 3, 4, 4), torch.randn(2, 4, 4, 4)
    q = proj.lift_teacher
    assert q.shape == (8, 4) and torch.allclose(q.T @ q, torch.eye(4), atol=1e-5)
    assert "lift_teacher" not in dict(proj.named_parameters())  # a buffer: never trained
    target = torch.einsum("dc,bchw->bdhw", q, layer_norm_channels(t))
    student = (
        torch.einsum("dc,bchw->bdhw", proj.lift_student.weight, s)
        + proj.lift_student.bias[None, :, None, None]
    )
    assert torch.allclose(proj.loss(s, t), ((student - target) ** 2).mean(), atol=1e-6)


def test_unknown_projector_is_named():
    import pytest

    with pytest.raises(ValueError, match="valid values: linear, vkd, mokd"):
        build_projector("conv3", 2, 2)
