"""The DOT optimizer's rule as its authors' code applies it (Zhao et al., ICCV 2023), for the tests.

Written from the published optimizer, not from ``hf_dtokd.balancing.dot``: the distillation loss and the
task loss are backpropagated separately (``zero_grad(set_to_none=True)`` between them), so a parameter a
loss does not reach has no gradient (None) for it. Per parameter ``p``:

* reached by both losses: task momentum ``mu - Delta`` (weight decay on this branch), distillation
  momentum ``mu + Delta``;
* reached by one loss only: that loss's buffer with the mean momentum ``mu`` and the weight decay.

The first step starts each buffer at the gradient (the authors' ``clone``), which equals zero-initialised
buffers. ``p <- p - lr v_t - lr v_d``.
"""

from __future__ import annotations

import torch


class ReferenceDOT:
    def __init__(self, params, lr, alpha, mu=0.9, delta=0.075, weight_decays=None):
        self.params = list(params)
        self.lr, self.alpha = lr, alpha
        self.momentum, self.momentum_kd = mu - delta, mu + delta
        self.weight_decays = weight_decays or [0.0] * len(self.params)
        self.task_buffers = [None] * len(self.params)
        self.kd_buffers = [None] * len(self.params)

    @staticmethod
    def separate_gradients(params, distill, task):
        """Each loss's gradients as the authors take them: a backward each, None where a loss does not reach."""
        grads = []
        for loss, retain in ((distill, True), (task, False)):
            for p in params:
                p.grad = None
            loss.backward(retain_graph=retain)
            grads.append([None if p.grad is None else p.grad.clone() for p in params])
        for p in params:
            p.grad = None
        return grads

    @torch.no_grad()
    def step(self, distill_grads, task_grads):
        mean = (self.momentum + self.momentum_kd) / 2.0
        for i, p in enumerate(self.params):
            g = task_grads[i]
            if g is None:
                continue
            g = (1.0 - self.alpha) * g + self.weight_decays[i] * p
            beta = self.momentum if distill_grads[i] is not None else mean
            buf = self.task_buffers[i]
            self.task_buffers[i] = g.clone() if buf is None else buf.mul_(beta).add_(g)
            p.sub_(self.lr * self.task_buffers[i])
        for i, p in enumerate(self.params):
            g = distill_grads[i]
            if g is None:
                continue
            g = self.alpha * g
            if task_grads[i] is None:
                g, beta = g + self.weight_decays[i] * p, mean
            else:
                beta = self.momentum_kd
            buf = self.kd_buffers[i]
            self.kd_buffers[i] = g.clone() if buf is None else buf.mul_(beta).add_(g)
            p.sub_(self.lr * self.kd_buffers[i])


def check_trainer_against_the_rule(trainer, reference, losses, steps, one_loss_prefix, rtol=0.0, atol=1e-6):
    """Replay ``steps`` of the authors' rule on ``reference`` (the student as it was before training) with the
    trainer's learning rate, alpha and weight-decay rule; ``losses()`` gives (distill, task) as separate scalars.
    Checks that the one-loss parameters are those named ``one_loss_prefix...`` and that every trained parameter
    equals the reference's."""
    args = trainer.args
    decay = set(trainer.get_decay_parameter_names(reference))
    names, params = zip(*reference.named_parameters())
    decays = [args.weight_decay if name in decay else 0.0 for name in names]
    rule = ReferenceDOT(params, args.learning_rate, args.alpha, args.dot_momentum, args.dot_delta, decays)
    for _ in range(steps):
        rule.step(*rule.separate_gradients(list(params), *losses()))
    one_loss = [name for name, buffer in zip(names, rule.task_buffers) if buffer is None]
    assert one_loss and all(name.startswith(one_loss_prefix) for name in one_loss), one_loss
    for (name, got), expected in zip(trainer.model.named_parameters(), params):
        assert torch.allclose(got, expected, rtol=rtol, atol=atol), name
