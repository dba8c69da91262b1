"""on_nonfinite_loss does what it says: skip_step takes no step, stop fails the run, continue marks it."""

import copy
import os

import pytest
import torch
from transformers import TrainerCallback

from hf_dtokd import DTOKDTrainer, NonFiniteLossError
from hf_dtokd.trainer.nonfinite import skip_next_call
from testing_utils import NaNTeacherAt, random_images, tiny_args, tiny_resnet, tiny_vit


class Snapshots(TrainerCallback):
    """Everything a step may change, after each optimizer step: weights, optimizer state and learning rate,
    scheduler state, trade-off state."""

    def __init__(self, trainer):
        self.trainer, self.after = trainer, {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        trainer = self.trainer
        self.after[state.global_step] = {
            "params": [p.detach().clone() for p in model.parameters()],
            "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
            "scheduler": copy.deepcopy(trainer.lr_scheduler.state_dict()),
            # the trade-off state but its event counter (a skipped window is counted, by design)
            "balancer": {
                k: v
                for k, v in copy.deepcopy(trainer.balancer.state_dict()).items()
                if k != "nonfinite_events"
            },
        }


def same(a, b) -> bool:
    """Bit-identical nested structures of tensors, numbers and strings."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def nan_at_step_3(tmp_path, method, **overrides):
    teacher = tiny_resnet()
    NaNTeacherAt(teacher, calls={3})
    settings = dict(
        method=method,
        max_steps=5,
        on_nonfinite_loss="skip_step",
        learning_rate=0.01,
        lr_scheduler_type="linear",
        warmup_steps=0,
    )
    settings.update(overrides)
    trainer = DTOKDTrainer(
        model=tiny_vit(),
        teacher_model=teacher,
        args=tiny_args(tmp_path, **settings),
        train_dataset=random_images(16),
    )
    snapshots = Snapshots(trainer)
    trainer.add_callback(snapshots)
    trainer.train()
    return trainer, snapshots.after


@pytest.mark.parametrize(
    ("method", "overrides"),
    [
        ("dto", {"optim": "adamw_torch", "weight_decay": 0.1}),  # AdamW: momentum and decay would still move
        ("fixed", {"optim": "adamw_torch", "weight_decay": 0.1}),
        ("dot", {}),  # DOT's momenta live in the balancer; its optimizer is plain SGD
        ("dto_amortized", {"optim": "adamw_torch", "weight_decay": 0.1}),
    ],
)
def test_a_skipped_step_leaves_weights_optimizer_scheduler_and_tradeoff_bit_identical(
    tmp_path, method, overrides
):
    trainer, after = nan_at_step_3(tmp_path, method, **overrides)
    assert trainer.state.global_step == 5
    before, skipped = after[2], after[3]
    for key in ("params", "optimizer", "scheduler", "balancer"):
        assert same(before[key], skipped[key]), key
    # the steps around it are real steps
    assert not same(after[1]["params"], after[2]["params"])
    assert not same(after[3]["params"], after[4]["params"])
    assert trainer.lr_scheduler.state_dict()["last_epoch"] == 4  # five steps, one skipped
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    for stepper in (trainer.optimizer, trainer.lr_scheduler):  # the one-shot skip was put back
        assert getattr(stepper.step, "__name__", "") != "skipped"


def test_skip_next_call_skips_one_call_and_restores_the_method():
    class Counter:
        def __init__(self):
            self.calls = 0

        def step(self):
            self.calls += 1

    counter = Counter()
    restore = skip_next_call(counter)
    counter.step()
    assert counter.calls == 0 and "step" not in vars(counter)
    counter.step()
    assert counter.calls == 1
    restore()  # a second restore is harmless
    skip_next_call(counter)()  # restored without being called
    counter.step()
    assert counter.calls == 2


def test_stop_raises_before_the_step_and_leaves_no_finished_model(tmp_path):
    teacher = tiny_resnet()
    NaNTeacherAt(teacher, calls={3})
    args = tiny_args(tmp_path, max_steps=5, on_nonfinite_loss="stop", save_strategy="steps", save_steps=2)
    trainer = DTOKDTrainer(
        model=tiny_vit(), teacher_model=teacher, args=args, train_dataset=random_images(16)
    )
    with pytest.raises(NonFiniteLossError, match=r"optimizer step 3 .*distill=nan.*checkpoint-2"):
        trainer.train()
    assert trainer.state.global_step == 2
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    top = set(os.listdir(tmp_path))  # the good checkpoint and the progress plot: no model, no card
    assert top == {"checkpoint-2", "tradeoff.png", "tradeoff_steps.json"}


def test_continue_applies_the_step_and_marks_the_run(tmp_path):
    teacher = tiny_resnet()
    NaNTeacherAt(teacher, calls={2})
    args = tiny_args(tmp_path, max_steps=3)
    trainer = DTOKDTrainer(
        model=tiny_vit(), teacher_model=teacher, args=args, train_dataset=random_images(16)
    )
    result = trainer.train()
    assert trainer.state.global_step == 3
    assert not all(torch.isfinite(p).all() for p in trainer.model.parameters())  # the Trainer's behaviour
    # step 2's NaN reached the weights, so step 3's losses are NaN too
    assert result.metrics["nonfinite_losses"] == 2 and result.metrics["nonfinite_weights"] > 0
    assert trainer.state.log_history[-1]["nonfinite_losses"] == 2
    trainer.create_model_card()
    card = (tmp_path / "README.md").read_text()
    assert "**Warning:** 2 optimizer step(s) of this run had non-finite (NaN/inf) losses" in card
    assert "of this model are not finite" in card
    with pytest.raises(ValueError, match="refusing to push the student to the Hub: .* hold NaN or inf"):
        trainer.push_to_hub()


def test_a_healthy_run_says_so_and_its_card_has_no_warning(tmp_path):
    args = tiny_args(tmp_path, max_steps=2)
    trainer = DTOKDTrainer(
        model=tiny_vit(), teacher_model=tiny_resnet(), args=args, train_dataset=random_images(16)
    )
    result = trainer.train()
    assert result.metrics["nonfinite_losses"] == 0 and result.metrics["nonfinite_weights"] == 0
    trainer.create_model_card()
    assert "Warning" not in (tmp_path / "README.md").read_text()
