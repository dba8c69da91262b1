"""ema_decay: the moving average of the student's weights, as written out; evaluated, checkpointed, kept."""

import pytest
import torch
from transformers import TrainerCallback

from hf_dtokd import DTOKDConfig, DTOKDTrainer
from testing_utils import (
    Crash,
    CrashAtStep,
    NaNTeacherAt,
    flat_params,
    random_images,
    tiny_args,
    tiny_resnet,
    tiny_vit,
)

DECAY = 0.5


class Weights(TrainerCallback):
    """The student's own weights after each step, and the weights evaluate() saw."""

    def __init__(self):
        self.after_step, self.evaluated = {}, {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.after_step[state.global_step] = flat_params(model).clone()

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        self.evaluated[state.global_step] = flat_params(model).clone()


def written_out(after_step, decay=DECAY):
    """e_1 = p_1, e_k = d e_(k-1) + (1 - d) p_k."""
    average = {}
    for step in sorted(after_step):
        p = after_step[step]
        average[step] = p.clone() if step == 1 else decay * average[step - 1] + (1 - decay) * p
    return average


def make(folder, callbacks=(), **overrides):
    settings = dict(ema_decay=DECAY, max_steps=4, per_device_train_batch_size=8, learning_rate=0.05)
    settings.update(overrides)
    return DTOKDTrainer(
        model=tiny_vit(),
        teacher_model=tiny_resnet(),
        args=tiny_args(folder, **settings),
        train_dataset=random_images(16),
        eval_dataset=random_images(8, seed=3),
        callbacks=list(callbacks),
    )


def test_the_average_is_evaluated_during_training_and_becomes_the_student(tmp_path):
    weights = Weights()
    trainer = make(tmp_path, [weights], eval_strategy="steps", eval_steps=2)
    trainer.train()
    expected = written_out(weights.after_step)
    assert not torch.allclose(expected[4], weights.after_step[4])  # the average is not the last weights
    for step in (2, 4):  # evaluate() scored the average, then the student got its own weights back
        torch.testing.assert_close(weights.evaluated[step], expected[step], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(flat_params(trainer.model), expected[4], rtol=1e-6, atol=1e-7)


def test_a_resumed_run_keeps_the_average(tmp_path):
    straight = make(tmp_path / "straight", save_strategy="steps", save_steps=2)
    straight.train()
    killed = make(tmp_path / "run", [CrashAtStep(3)], save_strategy="steps", save_steps=2)
    with pytest.raises(Crash):
        killed.train()
    resumed = make(tmp_path / "run", save_strategy="steps", save_steps=2)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    torch.testing.assert_close(flat_params(resumed.model), flat_params(straight.model), rtol=1e-6, atol=1e-7)
    make(tmp_path / "plain", ema_decay=0.0, max_steps=2, save_strategy="steps", save_steps=2).train()
    with pytest.raises(ValueError, match="holds no moving average"):
        make(tmp_path / "plain").train(resume_from_checkpoint=str(tmp_path / "plain" / "checkpoint-2"))


def test_a_skipped_step_leaves_the_average_alone(tmp_path):
    teacher = tiny_resnet()
    NaNTeacherAt(teacher, calls={3})
    weights = Weights()
    args = tiny_args(
        tmp_path, ema_decay=DECAY, max_steps=4, on_nonfinite_loss="skip_step", learning_rate=0.05
    )
    trainer = DTOKDTrainer(
        model=tiny_vit(),
        teacher_model=teacher,
        args=args,
        train_dataset=random_images(16),
        callbacks=[weights],
    )
    trainer.train()
    steps = {k: v for k, v in weights.after_step.items() if k != 3}  # step 3 was skipped
    average = steps[1].clone()
    for step in (2, 4):
        average = DECAY * average + (1 - DECAY) * steps[step]
    torch.testing.assert_close(flat_params(trainer.model), average, rtol=1e-6, atol=1e-7)


def test_ema_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match=r"ema_decay must lie in \[0, 1\)"):
        DTOKDConfig(output_dir=str(tmp_path), ema_decay=1.0)
    with pytest.raises(ValueError, match="ema_warmup=True needs a moving average"):
        DTOKDConfig(output_dir=str(tmp_path), ema_warmup=True)
