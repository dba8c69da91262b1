"""ShardedWindowGradients on one process (plain tensors: a shard is the whole parameter); the 2-process FSDP2
runs are in tests/distributed/test_sharded.py."""

from types import SimpleNamespace

import pytest
import torch

from hf_dtokd.gradients.sharded import ShardedWindowGradients

ONE_PROCESS = SimpleNamespace(num_processes=1)


def model_and_losses(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    x, y = torch.randn(6, 5), torch.randn(6, 3)
    out = model(x)
    return model, torch.stack([((out - y) ** 2).mean(), out.logsumexp(1).mean()])


def test_each_backward_lands_in_its_buffer_and_the_gram_is_theirs():
    model, losses = model_and_losses()
    params = list(model.parameters())
    expected = [
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)])
        for loss in losses
    ]
    gradients = ShardedWindowGradients(model.parameters(), 2, ONE_PROCESS)
    for index, loss in enumerate(losses):
        loss.backward(retain_graph=index == 0)
        gradients.take_gradients(index)
        assert all(p.grad is None for p in params), (
            "the backward's .grad must be cleared for the next objective"
        )
    for index in range(2):
        assert torch.allclose(gradients.buffers[index], expected[index])
    stacked = torch.stack(expected).double()
    assert torch.allclose(gradients.gram_with_grad(), stacked @ stacked.T)


def test_two_micro_batches_accumulate_and_the_update_is_the_weighted_sum():
    model, _ = model_and_losses()
    params = list(model.parameters())
    gradients = ShardedWindowGradients(params, 2, ONE_PROCESS)
    total = [torch.zeros(sum(p.numel() for p in params)) for _ in range(2)]
    for seed in (10, 11):  # two micro-batches of one window
        torch.manual_seed(seed)
        x, y = torch.randn(6, 5), torch.randn(6, 3)
        out = model(x)
        losses = torch.stack([((out - y) ** 2).mean(), out.logsumexp(1).mean()])
        for index, loss in enumerate(losses):
            grads = torch.autograd.grad(loss, params, retain_graph=True)
            total[index] += torch.cat([g.reshape(-1) for g in grads])
            loss.backward(retain_graph=index == 0)
            gradients.take_gradients(index)
    gradients.combine_into_grad(torch.tensor([0.3, 1.7]))
    combined = torch.cat([p.grad.reshape(-1) for p in params])
    assert torch.allclose(combined, 0.3 * total[0] + 1.7 * total[1], atol=1e-6)


def test_the_gram_can_leave_parameters_out_and_is_summed_over_ranks():
    model, losses = model_and_losses()
    calls = []
    ranks = SimpleNamespace(num_processes=2, reduce=lambda t, reduction: calls.append(reduction) or 2 * t)
    gradients = ShardedWindowGradients(model.parameters(), 2, ranks)
    for index, loss in enumerate(losses):
        loss.backward(retain_graph=index == 0)
        gradients.take_gradients(index)
    gradients.restrict_gram([False, False, True, True])  # the last layer only
    last = torch.cat([gradients.columns[2], gradients.columns[3]], dim=1).double()
    assert torch.allclose(gradients.gram_with_grad(), 2 * last @ last.T)
    assert calls == ["sum"]


def test_wrong_weight_count_is_refused():
    model, _ = model_and_losses()
    with pytest.raises(ValueError, match="expected 2 weights, got 3"):
        ShardedWindowGradients(model.parameters(), 2, ONE_PROCESS).combine_into_grad(torch.ones(3))
