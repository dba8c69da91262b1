"""Each projector's loss against a computation written out here; the orthogonal one stays orthogonal."""

import pytest
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


@pytest.mark.parametrize(("student", "teacher"), [(4, 8), (8, 4)])
def test_orthogonal_maps_survive_the_trainers_optimizer_and_learn(student, teacher):
    """AdamW with weight decay (the Trainer's optimizer): torch's default map for non-square matrices
    (Householder) became the zero matrix after one such step, and the loss stayed at the teacher's own."""
    torch.manual_seed(0)
    vkd, mokd = VkDProjector(student, teacher), MoKDStyleProjector(student, teacher)
    mixing = torch.randn(teacher, student)
    batches = [torch.randn(4, student, 4, 4) for _ in range(4)]
    targets = [
        torch.einsum("ts,bshw->bthw", mixing, s) for s in batches
    ]  # the teacher is a map of the student
    zero_prediction = smooth_l1(torch.zeros(4, teacher, 4, 4), layer_norm_channels(targets[0]))
    first = vkd.loss(batches[0], targets[0]).item()
    for projector in (vkd, mokd):
        optimizer = torch.optim.AdamW(projector.parameters(), lr=0.05, weight_decay=0.01)
        for _ in range(50):
            for s, t in zip(batches, targets):
                optimizer.zero_grad()
                projector.loss(s, t).backward()
                optimizer.step()
    w = vkd.proj.weight
    small = min(student, teacher)
    gram = w.T @ w if student <= teacher else w @ w.T
    assert torch.allclose(gram, torch.eye(small), atol=1e-5)  # still orthonormal, not zero
    u = mokd.subspace
    assert torch.allclose(u @ u.T, torch.eye(mokd.rank), atol=1e-5)
    # and it learned: below the loss of its start and of a zero prediction
    assert vkd.loss(batches[0], targets[0]).item() < 0.5 * min(first, zero_prediction.item())


def test_mokd_style_is_the_relative_error_in_a_learnable_orthonormal_teacher_subspace():
    torch.manual_seed(0)
    proj, s, t = MoKDStyleProjector(3, 6), torch.randn(2, 3, 4, 4), 3 * torch.randn(2, 6, 4, 4) + 1
    u = proj.subspace
    assert u.shape == (3, 6) and torch.allclose(u @ u.T, torch.eye(3), atol=1e-5)
    assert torch.allclose(
        u @ torch.ones(6), torch.zeros(3), atol=1e-5
    )  # never the layer norm's null direction
    target = torch.einsum("rc,bchw->brhw", u, layer_norm_channels(t))
    student = (
        torch.einsum("rc,bchw->brhw", proj.student_map.weight, s) + proj.student_map.bias[None, :, None, None]
    )
    expected = ((student - target) ** 2).sum() / (target**2).sum()
    assert torch.allclose(proj.loss(s, t), expected, atol=1e-6)
    optimizer = torch.optim.SGD(proj.parameters(), lr=0.5)
    for _ in range(5):
        optimizer.zero_grad()
        proj.loss(s, t).backward()
        optimizer.step()
    u_after = proj.subspace
    assert not torch.allclose(u_after, u) and torch.allclose(u_after @ u_after.T, torch.eye(3), atol=1e-5)


def _teacher_with_a_predictable_and_an_unpredictable_direction(n=512):
    """Teacher maps (a, -a, b, -b) with a = s and b = +-sqrt(2 - s^2), the sign a coin flip: every position
    has zero mean and unit variance over channels (the layer norm leaves it as it is); the direction
    (1, -1, 0, 0) is a linear function of the student feature s, the direction (0, 0, 1, -1) is not
    (E[b | s] = 0), and it carries more energy (E b^2 = 5/3 against E a^2 = 1/3)."""
    generator = torch.Generator().manual_seed(0)
    s = 2 * torch.rand(n, generator=generator) - 1
    sign = torch.randint(0, 2, (n,), generator=generator) * 2 - 1
    a, b = s, sign * torch.sqrt(2 - s**2)
    t = torch.stack([a, -a, b, -b], dim=1)
    return s[:, None, None, None], t[:, :, None, None]


def fit(projector, s, t, steps=400):
    optimizer = torch.optim.Adam(projector.parameters(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = projector.loss(s, t)
        loss.backward()
        optimizer.step()
    return float(projector.loss(s, t).detach())


def test_mokd_style_and_linear_projectors_have_different_optima():
    """A linear projector must fit every teacher direction: its optimum is the unpredictable energy, which
    least squares (numpy's, independent of the projector) gives. The subspace projector, rank 1, finds the
    predictable direction and fits it exactly."""
    import numpy as np

    torch.manual_seed(0)
    s, t = _teacher_with_a_predictable_and_an_unpredictable_direction()
    x = np.c_[s.reshape(-1, 1).numpy(), np.ones(len(s))]
    y = layer_norm_channels(t).reshape(len(s), 4).numpy()
    residual = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
    linear_optimum = float((residual**2).mean())
    assert linear_optimum > 0.7  # about (2 - E s^2) / 2 = 5/6
    assert fit(LinearProjector(1, 4), s, t) == pytest.approx(linear_optimum, rel=1e-3)
    subspace = MoKDStyleProjector(1, 4)
    assert subspace.rank == 1
    assert fit(subspace, s, t) < 1e-3  # relative error of a perfect fit in the chosen subspace
    predictable = torch.tensor([1.0, -1.0, 0.0, 0.0]) / 2**0.5
    assert abs(float(subspace.subspace[0].detach() @ predictable)) > 0.99


def test_mokd_style_rank_must_leave_a_proper_subspace():
    with pytest.raises(ValueError, match="at least 3 teacher channels"):
        MoKDStyleProjector(4, 2)
    with pytest.raises(ValueError, match=r"rank must lie in \[1, 3\)"):
        MoKDStyleProjector(4, 4, rank=3)


def test_unknown_projector_is_named():
    with pytest.raises(ValueError, match="valid values: linear, vkd, mokd"):
        build_projector("conv3", 2, 2)
