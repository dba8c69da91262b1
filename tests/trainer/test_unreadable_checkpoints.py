"""Files that cannot be read are named, with the fix: the checkpoint to resume from, the path that is wrong."""

import pytest
import transformers

from hf_dtokd import DTOKDTrainer
from hf_dtokd.trainer.checkpoints import CheckpointReadError
from testing_utils import random_images, tiny_args, tiny_resnet, tiny_vit


def make(folder, **overrides):
    settings = dict(max_steps=4, save_strategy="steps", save_steps=2, per_device_train_batch_size=8)
    settings.update(overrides)
    return DTOKDTrainer(
        model=tiny_vit(),
        teacher_model=tiny_resnet(),
        args=tiny_args(folder, **settings),
        train_dataset=random_images(16),
    )


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    make(folder).train()
    return folder


@pytest.mark.parametrize(
    "name", ["dtokd_state.pt", "optimizer.pt", "model.safetensors", "trainer_state.json"]
)
def test_a_truncated_checkpoint_file_is_named_with_the_earlier_checkpoint(tmp_path, trained, name):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    truncate(run / "checkpoint-4" / name)
    for resume in (str(run / "checkpoint-4"), True):
        with pytest.raises(CheckpointReadError) as raised:
            make(run, max_steps=6).train(resume_from_checkpoint=resume)
        message = str(raised.value)
        assert f"checkpoint file {run / 'checkpoint-4' / name} cannot be read" in message
        assert f"resume from the earlier checkpoint {run / 'checkpoint-2'}" in message
    resumed = make(run, max_steps=6)  # the advice works
    resumed.train(resume_from_checkpoint=str(run / "checkpoint-2"))
    assert resumed.state.global_step == 6


def test_without_an_earlier_checkpoint_the_error_says_to_start_afresh(tmp_path, trained):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    truncate(run / "checkpoint-2" / "optimizer.pt")
    with pytest.raises(
        CheckpointReadError, match="no earlier complete checkpoint exists beside it: start afresh"
    ):
        make(run).train(resume_from_checkpoint=str(run / "checkpoint-2"))


@pytest.fixture
def no_loading(monkeypatch):
    """Any from_pretrained call (which may reach the network) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("from_pretrained was called")

    monkeypatch.setattr(transformers.AutoModelForImageClassification, "from_pretrained", refuse)


@pytest.mark.usefixtures("no_loading")
@pytest.mark.parametrize("path", ["outputs/digits/teacher", "./teacher", "/nowhere/teacher", "../teacher"])
def test_a_teacher_path_that_is_no_folder_and_no_hub_id_is_refused_before_any_loading(tmp_path, path):
    with pytest.raises(ValueError, match=r"is neither a local folder .* nor a Hub id"):
        DTOKDTrainer(
            model=tiny_vit(),
            args=tiny_args(tmp_path, teacher_model_name_or_path=path),
            train_dataset=random_images(8),
        )


@pytest.mark.usefixtures("no_loading")
def test_a_teacher_path_to_a_file_is_refused(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file, not a model folder"):
        DTOKDTrainer(
            model=tiny_vit(),
            args=tiny_args(tmp_path, teacher_model_name_or_path=str(weights)),
            train_dataset=random_images(8),
        )


def test_a_hub_id_that_fails_offline_says_there_is_no_local_folder_either(tmp_path):
    with pytest.raises(ValueError, match="no local folder of that name .*read as a Hub id"):
        DTOKDTrainer(
            model=tiny_vit(),
            args=tiny_args(tmp_path, teacher_model_name_or_path="someone/no-such-teacher"),
            train_dataset=random_images(8),
        )
