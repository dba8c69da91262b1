"""One config per signal: the trainers read their options from it, record keyword options in it, and the model
card names the trainer, its losses and the options."""

import dataclasses

import pytest
import torch

from hf_dtokd import DeiTTokenConfig, DetectionKDConfig, FeatureKDConfig, FeatureKDTrainer
from hf_dtokd.tasks.classification.deit_token import DeiTTokenTrainer
from testing_utils import random_images, tiny_args, tiny_resnet, tiny_vit, two_head_deit


def test_keyword_options_are_written_into_the_signal_config_and_the_rest_is_kept(tmp_path):
    plain = tiny_args(tmp_path, method="fixed", alpha=0.3, learning_rate=0.07)
    trainer = FeatureKDTrainer(
        model=tiny_vit(),
        teacher_model=tiny_resnet(),
        args=plain,
        train_dataset=random_images(16),
        projector="vkd",
        group_features=True,
    )
    assert isinstance(trainer.args, FeatureKDConfig)
    assert (trainer.args.projector, trainer.args.group_features) == ("vkd", True)
    for field in dataclasses.fields(plain):
        if field.init and field.name not in ("projector", "group_features"):
            assert getattr(trainer.args, field.name) == getattr(plain, field.name), field.name
    assert trainer.objective_names == ("distill", "task") and trainer.projector_kind == "vkd"


def test_the_config_alone_sets_the_options(tmp_path):
    plain = tiny_args(tmp_path)
    settings = {field.name: getattr(plain, field.name) for field in dataclasses.fields(plain) if field.init}
    config = FeatureKDConfig(**settings, projector="mokd")
    trainer = FeatureKDTrainer(
        model=tiny_vit(), teacher_model=tiny_resnet(), args=config, train_dataset=random_images(16)
    )
    assert trainer.projector_kind == "mokd" and trainer.objective_names == ("distill", "task")
    deit = DeiTTokenTrainer(
        model=two_head_deit(),
        teacher_model=tiny_resnet(),
        args=DeiTTokenConfig(
            output_dir=str(tmp_path / "d"), deit_distillation="soft", use_cpu=True, report_to="none"
        ),
    )
    assert deit.deit_distillation == "soft"


def test_bad_signal_options_are_named():
    with pytest.raises(ValueError, match="unknown projector 'wide'; valid values: linear, vkd, mokd"):
        FeatureKDConfig(output_dir="x", projector="wide")
    with pytest.raises(ValueError, match="box_threshold must lie in"):
        DetectionKDConfig(output_dir="x", box_threshold=1.5)
    with pytest.raises(ValueError, match="unknown DeiT distillation"):
        DeiTTokenConfig(output_dir="x", deit_distillation="medium")


def test_the_card_names_the_trainer_its_losses_and_the_signal_options(tmp_path):
    trainer = FeatureKDTrainer(
        model=tiny_vit(),
        teacher_model=tiny_resnet(),
        projector="linear",
        args=tiny_args(tmp_path, temperature=2.0),
        train_dataset=random_images(16),
    )
    trainer.train()
    trainer.save_model()
    trainer.create_model_card()
    card = (tmp_path / "README.md").read_text()
    assert "(`FeatureKDTrainer`)" in card
    assert " + mean over stage pairs of the linear projector's loss)" in card  # in `distill`: two objectives
    assert "`task` (cross-entropy with the labels)" in card
    assert "signal options: `projector='linear'`, `student_stages=None`" in card
    assert torch.load(tmp_path / "training_args.bin", weights_only=False).projector == "linear"
