"""WindowGradients: accumulation over micro-batches, the Gram, the combination into .grad."""

import pytest
import torch

from hf_dtokd.gradients.parameters import WindowGradients, objective_reach


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def test_accumulates_the_window_gradient_and_leaves_grad_untouched():
    model = make_model()
    x = torch.randn(6, 3)
    window = WindowGradients(model.parameters())
    for chunk in x.split(3):
        window.accumulate(0, model(chunk).pow(2).mean() / 2)
    assert all(p.grad is None for p in model.parameters())
    expected = torch.autograd.grad(model(x).pow(2).mean(), list(model.parameters()))
    assert torch.allclose(window.buffers[0], flat(expected), atol=1e-6)
    loss = model(x).pow(2).mean()
    window.mark_reached(objective_reach(torch.stack([loss, loss.detach()]), window.parameters))
    assert all(window.reached[0]) and not any(window.reached[1])


def test_gram_and_combination_against_explicit_vectors():
    model = make_model()
    x = torch.randn(5, 3)
    out = model(x)
    loss_a, loss_b = out[:, 0].mean(), out[:, 1].pow(2).mean()
    window = WindowGradients(model.parameters())
    window.accumulate(0, loss_a)
    loss_b.backward()
    params = list(model.parameters())
    g_a = flat(torch.autograd.grad(model(x)[:, 0].mean(), params))
    g_b = flat([p.grad for p in params])
    gram = window.gram_with_grad()
    expected = torch.tensor([[g_a @ g_a, g_a @ g_b], [g_a @ g_b, g_b @ g_b]], dtype=torch.float64)
    assert torch.allclose(gram, expected, rtol=1e-5)
    window.combine_into_grad(torch.tensor([0.25, 0.75]))
    assert torch.allclose(flat([p.grad for p in params]), 0.25 * g_a + 0.75 * g_b, atol=1e-6)


def test_three_objectives_gram_and_combination():
    model = make_model()
    x = torch.randn(5, 3)
    params = list(model.parameters())
    losses = [lambda out: out[:, 0].mean(), lambda out: out[:, 1].pow(2).mean(), lambda out: out.sum()]
    grads = [flat(torch.autograd.grad(fn(model(x)), params)) for fn in losses]
    window = WindowGradients(params, num_buffers=2)
    out = model(x)
    window.accumulate(0, losses[0](out))
    window.accumulate(1, losses[1](out))
    losses[2](out).backward()
    stacked = torch.stack(grads).double()
    assert torch.allclose(window.gram_with_grad(), stacked @ stacked.T, rtol=1e-5)
    weights = torch.tensor([0.2, 0.3, 0.5])
    window.combine_into_grad(weights)
    assert torch.allclose(
        flat([p.grad for p in params]), (weights[:, None] * torch.stack(grads)).sum(0), atol=1e-6
    )
    try:
        window.combine_into_grad(torch.tensor([0.5, 0.5]))
    except ValueError as error:
        assert "expected 3 weights" in str(error)
    else:
        raise AssertionError("expected a ValueError")


def test_unused_parameters_count_as_zero_gradient():
    model = make_model()
    unused = torch.nn.Linear(2, 2)
    params = list(model.parameters()) + list(unused.parameters())
    window = WindowGradients(params)
    loss = model(torch.randn(2, 3)).sum()
    window.accumulate(0, loss)
    assert window.buffers[0, -6:].abs().sum() == 0
    window.mark_reached(objective_reach(torch.stack([loss, unused(torch.randn(1, 2)).sum()]), params))
    assert window.reached[0] == [True] * 4 + [False] * 2
    assert window.reached[1] == [False] * 4 + [True] * 2
    window.combine_into_grad(torch.tensor([1.0, 1.0]))
    assert torch.equal(unused.weight.grad, torch.zeros(2, 2))


def test_frozen_parameters_are_skipped_and_no_trainable_parameter_is_an_error():
    model = make_model()
    model[0].requires_grad_(False)
    assert len(WindowGradients(model.parameters()).parameters) == 2
    model.requires_grad_(False)
    try:
        WindowGradients(model.parameters())
    except ValueError as error:
        assert "no trainable parameter" in str(error)
    else:
        raise AssertionError("expected a ValueError")


class HostDoubling(torch.autograd.Function):
    """Doubles its input; the backward goes through numpy, which vmap cannot batch."""

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return torch.from_numpy(grad.detach().numpy() * 2)


def batched_and_separate(model, losses_of):
    x = torch.randn(5, 3)
    separate, batched = WindowGradients(model.parameters(), 2), WindowGradients(model.parameters(), 2)
    for index, loss in enumerate(losses_of(model, x)):
        separate.accumulate(index, loss)
    used_batch = batched.accumulate_batched(torch.stack(losses_of(model, x)))
    return separate, batched, used_batch


def test_batched_per_loss_gradients_equal_separate_calls():
    def losses(model, x):
        out = model(x)
        return [out.pow(2).mean(), out.sum() * 0.1]

    separate, batched, used_batch = batched_and_separate(make_model(), losses)
    assert used_batch and not batched.batched_unsupported
    assert torch.allclose(batched.buffers, separate.buffers, atol=1e-6)


def test_batched_per_loss_gradients_fall_back_where_vmap_cannot_batch(caplog):
    def losses(model, x):
        out = HostDoubling.apply(model(x))
        return [out.pow(2).mean(), out.sum() * 0.1]

    separate, batched, used_batch = batched_and_separate(make_model(), losses)
    assert not used_batch and batched.batched_unsupported
    assert "using one call per loss" in caplog.text
    assert torch.allclose(batched.buffers, separate.buffers, atol=1e-6)
    assert batched.buffers.abs().sum() > 0


def test_reach_is_read_off_the_graph_not_off_zero_gradients():
    """Backpropagating one entry of a stacked loss vector gives the other loss's parameters zeros, not None;
    the graph walk still tells them apart (and a loss built twice over one parameter is found once)."""
    torch.manual_seed(0)
    trunk, head, projector = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2), torch.nn.Linear(4, 5)
    hidden = trunk(torch.randn(6, 3))
    task, distill = head(hidden).pow(2).mean(), (projector(hidden) + projector(hidden)).pow(2).mean()
    losses = torch.stack([distill, task])
    params = [*trunk.parameters(), *head.parameters(), *projector.parameters()]
    zeros = torch.autograd.grad(losses[0], params, allow_unused=True, retain_graph=True)
    assert all(g is not None for g in zeros)  # why reach cannot come from autograd.grad
    assert objective_reach(losses, params) == [
        [True, True, False, False, True, True],
        [True] * 4 + [False] * 2,
    ]
    assert objective_reach(losses.detach(), params) == [[False] * 6, [False] * 6]
    with pytest.raises(ValueError, match="torch.stack"):
        objective_reach(torch.cat([distill[None], task[None]]), params)


def test_a_restricted_gram_covers_the_included_parameters_and_the_combination_still_covers_all():
    """gram_parameters='student': the Gram of the included parameters only (the first layer here); the
    update written into .grad still combines every parameter's gradients."""
    model = make_model()
    x = torch.randn(5, 3)
    out = model(x)
    loss_a, loss_b = out[:, 0].mean(), out[:, 1].pow(2).mean()
    window = WindowGradients(model.parameters())
    window.restrict_gram([True, True, False, False])
    window.accumulate(0, loss_a)
    loss_b.backward()
    params = list(model.parameters())
    g_a = torch.autograd.grad(model(x)[:, 0].mean(), params)
    g_b = [p.grad.clone() for p in params]
    a, b = flat(g_a[:2]), flat(g_b[:2])
    expected = torch.tensor([[a @ a, a @ b], [a @ b, b @ b]], dtype=torch.float64)
    assert torch.allclose(window.gram_with_grad(), expected, rtol=1e-5)
    window.combine_into_grad(torch.tensor([0.25, 0.75]))
    assert torch.allclose(flat([p.grad for p in params]), 0.25 * flat(g_a) + 0.75 * flat(g_b), atol=1e-6)
    with pytest.raises(ValueError, match="cover no parameter"):
        window.restrict_gram([False] * 4)
