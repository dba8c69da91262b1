"""Resume and the reliability table: interrupted runs continue exactly, bad checkpoints are refused."""

import errno
import json
import math
import shutil

import pytest
import torch

from hf_dtokd import DTOKDTrainer, NonFiniteLossError
from testing_utils import (
    Crash,
    CrashAtStep,
    NaNTeacherAt,
    random_images,
    tiny_args,
    tiny_resnet,
    tiny_vit,
    train_logs,
)

DATA = random_images(32)


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def make(folder, method="dto", student=tiny_vit, callbacks=(), **overrides):
    settings = dict(
        method=method,
        max_steps=4,
        per_device_train_batch_size=8,
        learning_rate=0.05,
        save_strategy="steps",
        save_steps=2,
        temperature=2.0,
    )
    settings.update(overrides)
    return DTOKDTrainer(
        model=student(),
        teacher_model=tiny_resnet(),
        args=tiny_args(folder, **settings),
        train_dataset=DATA,
        callbacks=list(callbacks),
    )


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("dto", {}),
        ("dto_amortized", {}),
        ("dot", {}),
        ("dto", {"gradient_placement": "representation"}),
        ("dto_amortized", {"look_ahead": "next_batch"}),  # the previous window's losses are in the checkpoint
        ("dto", {"teacher_cache": True}),  # the resumed trainer caches again: same logits, same rows
    ],
)
def test_a_killed_vit_run_resumed_from_its_last_checkpoint_ends_like_the_uninterrupted_one(
    tmp_path, method, options
):
    straight = make(tmp_path / "straight", method, **options)
    straight.train()
    killed = make(tmp_path / "run", method, callbacks=[CrashAtStep(3)], **options)
    with pytest.raises(Crash):
        killed.train()
    resumed = make(tmp_path / "run", method, **options)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 4
    assert torch.allclose(flat(resumed.model), flat(straight.model), atol=1e-6)
    assert torch.allclose(resumed.balancer.pi, straight.balancer.pi, atol=1e-6)
    expected, got = straight.balancer.state_dict(), resumed.balancer.state_dict()
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert torch.allclose(got[key].float(), value.float(), atol=1e-6), key


def test_a_checkpoint_of_another_method_is_refused_naming_both(tmp_path):
    make(tmp_path, "dto_amortized", max_steps=2).train()
    with pytest.raises(ValueError, match="written by method 'dto_amortized' but this run uses method 'dto'"):
        make(tmp_path, "dto").train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


def test_an_older_layout_and_a_plain_trainer_checkpoint_are_refused(tmp_path):
    make(tmp_path, max_steps=2).train()
    checkpoint = tmp_path / "checkpoint-2"
    state = torch.load(checkpoint / "dtokd_state.pt", weights_only=False)
    torch.save({"balancer": state["balancer"], "nonfinite_losses": state["nonfinite_losses"]},
               checkpoint / "dtokd_state.pt")  # fmt: skip  # the layout of hf-dtokd 0.1.0 before this change
    with pytest.raises(ValueError, match="layout None .older hf-dtokd."):
        make(tmp_path).train(resume_from_checkpoint=str(checkpoint))
    (checkpoint / "dtokd_state.pt").unlink()
    with pytest.raises(ValueError, match="has no trade-off state .* silently restart pi"):
        make(tmp_path).train(resume_from_checkpoint=str(checkpoint))


def test_an_interrupted_save_is_never_taken_as_a_valid_checkpoint(tmp_path, monkeypatch):
    import hf_dtokd.trainer.checkpoints as checkpoints

    real_save, calls = torch.save, []

    def disk_full_on_second_save(obj, path, *args, **kwargs):
        if "dtokd_state" in str(path):
            calls.append(path)
        if len(calls) == 2 and "dtokd_state" in str(path):
            real_save(obj, path, *args, **kwargs)  # a partial file exists when the disk fills up
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "save", disk_full_on_second_save)
    with pytest.raises(OSError, match="No space left"):  # the error surfaces, nothing swallows it
        make(tmp_path).train()
    monkeypatch.undo()
    assert (tmp_path / "checkpoint-4").is_dir() and not (
        tmp_path / "checkpoint-4" / "dtokd_state.pt"
    ).exists()
    resumed = make(tmp_path)
    resumed.train(resume_from_checkpoint=True)  # takes checkpoint-2, the newest complete one
    straight = make(tmp_path / "straight")
    straight.train()
    assert torch.allclose(flat(resumed.model), flat(straight.model), atol=1e-6)


def test_a_checkpoint_without_trainer_state_is_incomplete(tmp_path):
    make(tmp_path, max_steps=2).train()
    (tmp_path / "checkpoint-2" / "trainer_state.json").unlink()
    with pytest.raises(ValueError, match="is incomplete"):
        make(tmp_path).train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        make(tmp_path).train(resume_from_checkpoint=True)


def test_an_output_dir_that_cannot_be_written_surfaces_the_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError):
        make(blocker / "out", max_steps=2).train()


@pytest.mark.parametrize("method", ["dto", "dto_amortized", "upgrad", "dot", "uncertainty"])
def test_several_nonfinite_steps_freeze_pi_count_the_events_and_training_goes_on(tmp_path, method):
    teacher = tiny_resnet()
    NaNTeacherAt(teacher, calls={2, 3, 4})
    args = tiny_args(
        tmp_path, method=method, max_steps=5, per_device_train_batch_size=16, on_nonfinite_loss="skip_step"
    )
    trainer = DTOKDTrainer(
        model=tiny_vit(), teacher_model=teacher, args=args, train_dataset=random_images(16)
    )
    trainer.train()
    assert trainer.state.global_step == 5
    assert torch.isfinite(flat(trainer.model)).all()
    pis = train_logs(trainer, "pi_distill")
    assert all(math.isfinite(p) for p in pis)
    if method in ("dto", "upgrad", "dot"):  # gradient methods keep pi through the bad windows
        assert pis[1] == pis[2] == pis[3] == pytest.approx(pis[0])
    assert train_logs(trainer, "nonfinite_losses") == [0, 1, 2, 3, 3]
    if method != "dot":  # DOT's pi is alpha: it has no trade-off update to skip
        assert train_logs(trainer, "tradeoff_skipped")[-1] == 3


def test_nonfinite_policy_continue_is_the_trainers_and_stop_ends_the_run(tmp_path):
    teacher = tiny_resnet()
    NaNTeacherAt(teacher, calls={2})
    args = tiny_args(tmp_path / "c", max_steps=3, per_device_train_batch_size=16)
    trainer = DTOKDTrainer(
        model=tiny_vit(), teacher_model=teacher, args=args, train_dataset=random_images(16)
    )
    trainer.train()
    assert trainer.state.global_step == 3 and not torch.isfinite(flat(trainer.model)).all()

    teacher = tiny_resnet()
    NaNTeacherAt(teacher, calls={2})
    args = tiny_args(tmp_path / "s", max_steps=4, per_device_train_batch_size=16, on_nonfinite_loss="stop")
    trainer = DTOKDTrainer(
        model=tiny_vit(), teacher_model=teacher, args=args, train_dataset=random_images(16)
    )
    with pytest.raises(NonFiniteLossError):
        trainer.train()
    assert trainer.state.global_step == 1 and torch.isfinite(flat(trainer.model)).all()


def test_trainer_state_and_tradeoff_state_sit_side_by_side(tmp_path):
    make(tmp_path, max_steps=2).train()
    checkpoint = tmp_path / "checkpoint-2"
    state = torch.load(checkpoint / "dtokd_state.pt", weights_only=False)
    assert (state["format"], state["method"], state["objectives"]) == (2, "dto", ["distill", "task"])
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 2
    assert not list(checkpoint.glob("*.partial"))
    shutil.rmtree(checkpoint)


def test_a_checkpoint_for_other_objectives_is_refused(tmp_path):
    from testing_utils import ThreeObjectives

    make(tmp_path, "famo", max_steps=2).train()
    args = tiny_args(tmp_path, method="famo", max_steps=4, per_device_train_batch_size=8)
    three = ThreeObjectives(model=tiny_vit(), teacher_model=tiny_resnet(), args=args, train_dataset=DATA)
    with pytest.raises(ValueError, match=r"balances the objectives \('distill', 'task'\) but this run has"):
        three.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


@pytest.mark.parametrize(
    ("method", "options"),
    [("dto", {}), ("dto_amortized", {}), ("dto", {"gradient_placement": "representation"})],
)
def test_the_per_step_trace_and_the_logged_figures_survive_a_resume(tmp_path, method, options):
    """Saved every 2 steps, logged every 3: the checkpoint at step 4 holds step 4's values, not yet logged,
    and the trace of steps 1-3; the resumed run's tradeoff_steps.json and logs equal the uninterrupted run's."""
    settings = dict(max_steps=6, logging_steps=3, save_steps=2, plot_tradeoff=True, **options)
    straight = make(tmp_path / "straight", method, **settings)
    straight.train()
    killed = make(tmp_path / "run", method, callbacks=[CrashAtStep(5)], **settings)
    with pytest.raises(Crash):
        killed.train()
    resumed = make(tmp_path / "run", method, **settings)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-4"))
    expected = json.loads((tmp_path / "straight" / "tradeoff_steps.json").read_text())
    got = json.loads((tmp_path / "run" / "tradeoff_steps.json").read_text())
    assert got.keys() == expected.keys() and "weight_distill" in got
    for name in expected:
        assert got[name]["step"] == expected[name]["step"], name
        assert got[name]["value"] == pytest.approx(expected[name]["value"], abs=1e-6, nan_ok=True), name
    assert len(got["weight_distill"]["step"]) == 6  # one value per optimizer step, none lost
    for key in ("pi_distill", "weight_distill", "distill_loss", "task_loss"):
        assert train_logs(resumed, key) == pytest.approx(train_logs(straight, key), abs=1e-6), key
