"""DOT: one and two steps of the SGD rule and of the AdamW form against hand computations."""

import math

import pytest
import torch

from hf_dtokd.balancing import DOT
from hf_dtokd.gradients.parameters import WindowGradients, objective_reach

LR = 0.1


class TwoHeads(torch.nn.Module):
    """A shared body reached by both losses, and a head reached by the task loss only."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Linear(3, 2)
        self.task_head = torch.nn.Linear(2, 1)

    def losses(self, x):
        hidden = self.body(x)
        return hidden.pow(2).mean(), (self.task_head(torch.tanh(hidden)) - 1).pow(2).mean()


def run_steps(dot, model, batches, weight_decays, max_grad_norm=0.0):
    """What the trainer does: per-loss gradients, the DOT direction in .grad, then p <- p - lr .grad."""
    params = list(model.parameters())
    window = WindowGradients(params)
    dot.configure(window, weight_decays, max_grad_norm)
    for x in batches:
        for p in params:
            p.grad = None
        window.reset()
        distill, task = model.losses(x)
        window.mark_reached(objective_reach(torch.stack([distill, task]), params))
        window.accumulate(0, distill)
        task.backward()
        losses = torch.stack([distill, task]).detach()
        dot.update_from_gram(window.gram_with_grad(), losses)
        dot.combine_gradients(window, losses)
        with torch.no_grad():
            for p in params:
                p -= LR * p.grad


def per_loss_grads(model, x):
    params = list(model.parameters())
    distill, task = model.losses(x)
    g_d = torch.autograd.grad(distill, params[:2], retain_graph=True)
    g_t = torch.autograd.grad(task, params)
    return list(g_d), list(g_t)


def test_two_sgd_steps_equal_the_reference_rule():
    alpha, mu, delta, wd = 0.7, 0.9, 0.075, 0.01
    torch.manual_seed(1)
    batches = [torch.randn(5, 3), torch.randn(5, 3)]
    model, reference = TwoHeads(), TwoHeads()
    run_steps(DOT(alpha=alpha, momentum=mu, delta=delta), model, batches, [wd, 0.0, wd, 0.0])

    params = list(reference.parameters())
    v_t = [torch.zeros_like(p) for p in params]
    v_d = [torch.zeros_like(p) for p in params[:2]]
    for x in batches:
        g_d, g_t = per_loss_grads(reference, x)
        decays = [wd, 0.0, wd, 0.0]
        with torch.no_grad():
            for j, p in enumerate(params):
                if j < 2:  # body: both losses reach it, momenta mu -/+ Delta
                    v_t[j] = (mu - delta) * v_t[j] + ((1 - alpha) * g_t[j] + decays[j] * p)
                    v_d[j] = (mu + delta) * v_d[j] + alpha * g_d[j]
                    update = v_t[j] + v_d[j]
                else:  # task head only: the reference's mean momentum mu
                    v_t[j] = mu * v_t[j] + ((1 - alpha) * g_t[j] + decays[j] * p)
                    update = v_t[j]
                p -= LR * update
    for got, expected in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize(
    ("second_moment", "bias_correction"), [("sum", "branches"), ("branches", "branches"), ("sum", "shared")]
)
def test_two_adamw_steps_equal_the_hand_written_extension(second_moment, bias_correction):
    alpha, beta1, delta, beta2, eps, wd = 0.5, 0.9, 0.05, 0.999, 1e-8, 0.1
    torch.manual_seed(2)
    batches = [torch.randn(4, 3), torch.randn(4, 3)]
    model, reference = TwoHeads(), TwoHeads()
    dot = DOT(
        alpha=alpha,
        momentum=beta1,
        delta=delta,
        form="adamw",
        beta2=beta2,
        adam_eps=eps,
        second_moment=second_moment,
        bias_correction=bias_correction,
    )
    run_steps(
        dot,
        model,
        batches,
        [wd] * 4,
    )

    params = list(reference.parameters())
    m_t = [torch.zeros_like(p) for p in params]
    m_d = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for k, x in enumerate(batches, start=1):
        g_d, g_t = per_loss_grads(reference, x)
        with torch.no_grad():
            for j, p in enumerate(params):
                both = j < 2
                b_t, b_d = (beta1 - delta, beta1 + delta) if both else (beta1, beta1)
                gt, gd = (1 - alpha) * g_t[j], (alpha * g_d[j] if both else torch.zeros_like(p))
                m_t[j] = b_t * m_t[j] + (1 - b_t) * gt
                m_d[j] = b_d * m_d[j] + (1 - b_d) * gd
                squares = (gt + gd) ** 2 if second_moment == "sum" else gt**2 + gd**2
                v[j] = beta2 * v[j] + (1 - beta2) * squares
                if bias_correction == "shared":  # AdamW's 1 - beta1^k for both first moments
                    first = (m_t[j] + m_d[j]) / (1 - beta1**k)
                else:
                    first = m_t[j] / (1 - b_t**k) + m_d[j] / (1 - b_d**k)
                p -= LR * (first / ((v[j] / (1 - beta2**k)).sqrt() + eps) + wd * p)
    for got, expected in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(got, expected, atol=1e-6)


def test_clipping_scales_both_gradients_before_the_momenta_and_reports_the_norm():
    torch.manual_seed(3)
    x = torch.randn(5, 3)
    model, reference = TwoHeads(), TwoHeads()
    dot = DOT(alpha=0.5)
    run_steps(dot, model, [x], [0.0] * 4, max_grad_norm=1e-3)
    g_d, g_t = per_loss_grads(reference, x)
    summed = [0.5 * g_t[j] + (0.5 * g_d[j] if j < 2 else 0) for j in range(4)]
    norm = math.sqrt(sum(float(s.pow(2).sum()) for s in summed))
    assert float(dot.last_grad_norm) == pytest.approx(norm, rel=1e-5)
    with torch.no_grad():
        for p, s in zip(reference.parameters(), summed):
            p -= LR * s * (1e-3 / (norm + 1e-6))
    for got, expected in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(got, expected, atol=1e-6)  # float32: a few ulps of O(1) values


def test_state_round_trip_continues_with_the_same_buffers():
    torch.manual_seed(4)
    batches = [torch.randn(5, 3) for _ in range(3)]
    straight = TwoHeads()
    run_steps(DOT(), straight, batches, [0.01] * 4)

    first, dot = TwoHeads(), DOT()
    run_steps(dot, first, batches[:2], [0.01] * 4)
    state = dot.state_dict()
    assert state["buffers"].shape == (2, sum(p.numel() for p in first.parameters())) and state["steps"] == 2
    resumed = DOT()
    resumed.load_state_dict(state)  # before configure: kept until the buffers exist
    run_steps(resumed, first, batches[2:], [0.01] * 4)
    for got, expected in zip(first.parameters(), straight.parameters()):
        assert torch.allclose(got, expected, atol=1e-6)  # float32: a few ulps of O(1) values


def test_bad_hyper_parameters_and_a_checkpoint_of_the_other_form():
    with pytest.raises(ValueError, match="dot_momentum"):
        DOT(momentum=1.0)
    with pytest.raises(ValueError, match="dot_delta"):
        DOT(momentum=0.9, delta=0.2)
    with pytest.raises(ValueError, match="alpha"):
        DOT(alpha=1.5)
    with pytest.raises(ValueError, match="unknown DOT form"):
        DOT(form="lion")
    with pytest.raises(ValueError, match="form 'sgd'.*form 'adamw'"):
        DOT(form="adamw").load_state_dict(DOT().state_dict())
    with pytest.raises(ValueError, match="unknown dot_second_moment 'mean'"):
        DOT(form="adamw", second_moment="mean")
    with pytest.raises(ValueError, match="belongs to the AdamW form"):
        DOT(form="sgd", second_moment="branches")
    with pytest.raises(ValueError, match="second moment is of 'sum', the run's of 'branches'"):
        DOT(form="adamw", second_moment="branches").load_state_dict(DOT(form="adamw").state_dict())
    with pytest.raises(ValueError, match="unknown dot_bias_correction 'none'"):
        DOT(form="adamw", bias_correction="none")
    with pytest.raises(ValueError, match="dot_bias_correction='shared' belongs to the AdamW form"):
        DOT(form="sgd", bias_correction="shared")
    with pytest.raises(ValueError, match="bias correction is 'branches', the run's 'shared'"):
        DOT(form="adamw", bias_correction="shared").load_state_dict(DOT(form="adamw").state_dict())


class TrunkHeadProjector(torch.nn.Module):
    """A trunk both losses reach, a head only the task loss reaches, a projector only distillation reaches."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.trunk = torch.nn.Linear(3, 4)
        self.head = torch.nn.Linear(4, 2)
        self.projector = torch.nn.Linear(4, 3)

    def losses(self, x, y, target):
        hidden = torch.tanh(self.trunk(x))
        task = torch.nn.functional.cross_entropy(self.head(hidden), y)
        return (self.projector(hidden) - target).pow(2).mean(), task


def test_twenty_steps_with_one_loss_parameters_equal_the_authors_rule():
    """The trainer's way (stacked losses: zero gradients for the other loss's parameters) against the DOT
    authors' rule with two separate backwards, 20 steps with weight decay on every parameter."""
    from dot_reference import ReferenceDOT

    alpha, wd = 0.6, 0.05
    torch.manual_seed(6)
    batches = [(torch.randn(8, 3), torch.randint(0, 2, (8,)), torch.randn(8, 3)) for _ in range(20)]
    model, reference = TrunkHeadProjector(), TrunkHeadProjector()
    params = list(model.parameters())
    window, dot = WindowGradients(params), DOT(alpha=alpha)
    dot.configure(window, [wd] * len(params), 0.0)
    for x, y, target in batches:
        for p in params:
            p.grad = None
        window.reset()
        losses = torch.stack(model.losses(x, y, target))
        window.mark_reached(objective_reach(losses, params))
        window.accumulate(0, losses[0])
        losses[1].backward()
        dot.update_from_gram(window.gram_with_grad(), losses.detach())
        dot.combine_gradients(window, losses.detach())
        with torch.no_grad():
            for p in params:
                p -= LR * p.grad

    ref_params = list(reference.parameters())
    rule = ReferenceDOT(ref_params, LR, alpha, weight_decays=[wd] * len(ref_params))
    for x, y, target in batches:
        rule.step(*rule.separate_gradients(ref_params, *reference.losses(x, y, target)))
    assert rule.task_buffers[4] is None and rule.kd_buffers[2] is None  # one-loss parameters, as built
    for got, expected in zip(params, ref_params):
        assert torch.allclose(got, expected, rtol=0.0, atol=1e-6)
    # the projector's task buffer (and the head's distillation buffer) never moved
    sizes = [p.numel() for p in params]
    task_rows, distill_rows = (row.split(sizes) for row in dot.buffers)
    assert all(float(task_rows[j].abs().max()) == 0.0 for j in (4, 5))
    assert all(float(distill_rows[j].abs().max()) == 0.0 for j in (2, 3))


@pytest.mark.parametrize(
    ("max_grad_norm", "bias_correction"), [(0.0, "branches"), (1.0, "branches"), (1.0, "shared")]
)
def test_dot_adamw_without_the_momentum_gap_is_the_trainers_adamw_on_the_fixed_alpha_loss(
    tmp_path, max_grad_norm, bias_correction
):
    """dot_delta=0 gives both branches beta1: the sum of the two first moments is AdamW's first moment of
    alpha g_d + (1 - alpha) g_t, so 15 steps must land where torch.optim.AdamW (the Trainer's adamw_torch)
    takes method='fixed' with the same alpha, weight decay, clipping and schedule."""
    from hf_dtokd import DTOKDTrainer
    from testing_utils import random_images, tiny_args, tiny_resnet, tiny_vit

    data = random_images(32)
    common = dict(
        max_steps=15,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        lr_scheduler_type="cosine",
        weight_decay=0.05,
        adam_beta1=0.9,
        adam_beta2=0.99,
        adam_epsilon=1e-7,
        max_grad_norm=max_grad_norm,
        alpha=0.3,
        temperature=2.0,
    )
    runs = {}
    for name, overrides in {
        "adamw": {"method": "fixed", "optim": "adamw_torch"},
        "dot_adamw": {
            "method": "dot_adamw",
            "dot_delta": 0.0,
            "dot_momentum": 0.9,
            "dot_bias_correction": bias_correction,
        },
    }.items():
        args = tiny_args(tmp_path / name, **common, **overrides)
        trainer = DTOKDTrainer(model=tiny_vit(), teacher_model=tiny_resnet(), args=args, train_dataset=data)
        trainer.train()
        runs[name] = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])
    start = torch.cat([p.detach().reshape(-1) for p in tiny_vit().parameters()])
    assert (runs["adamw"] - start).abs().max() > 1e-3, "the reference did not move"
    assert torch.allclose(runs["dot_adamw"], runs["adamw"], atol=1e-5), (
        (runs["dot_adamw"] - runs["adamw"]).abs().max()
    )
