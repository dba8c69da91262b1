"""load_best_model_at_end loads exactly the best checkpoint's weights, for every student family the tests build."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, AutoModelForObjectDetection

from hf_dtokd import DetectionKDTrainer, DTOKDTrainer, FeatureKDTrainer
from hf_dtokd.data import generate_shapes
from hf_dtokd.tasks.detection.inputs import DetectionTransform
from testing_utils import (
    SIZE,
    detection_args,
    processor,
    random_images,
    tiny_args,
    tiny_detr,
    tiny_resnet,
    tiny_vit,
    two_head_deit,
)


class FirstEvaluationIsBest:
    """compute_metrics whose score falls at every evaluation: checkpoint-1 is the best, deterministically."""

    def __init__(self):
        self.calls = 0

    def __call__(self, prediction):
        self.calls += 1
        return {"score": -float(self.calls)}


BEST = dict(
    max_steps=3,
    eval_strategy="steps",
    eval_steps=1,
    save_strategy="steps",
    save_steps=1,
    load_best_model_at_end=True,
    metric_for_best_model="score",
    greater_is_better=True,
    learning_rate=0.05,
)


def classification(tmp_path, student, trainer_class=DTOKDTrainer, **extra):
    return trainer_class(
        model=student,
        teacher_model=tiny_resnet(),
        args=tiny_args(tmp_path, **BEST),
        train_dataset=random_images(16),
        eval_dataset=random_images(8, seed=3),
        compute_metrics=FirstEvaluationIsBest(),
        **extra,
    )


def detection(tmp_path):
    shapes = generate_shapes(16, image_size=SIZE, seed=3).with_transform(DetectionTransform(processor(), 3))
    held_out = generate_shapes(8, image_size=SIZE, seed=4).with_transform(DetectionTransform(processor(), 3))
    return DetectionKDTrainer(
        model=tiny_detr(0),
        teacher_model=tiny_detr(1),
        args=detection_args(tmp_path, **BEST),
        train_dataset=shapes,
        eval_dataset=held_out,
        compute_metrics=FirstEvaluationIsBest(),
    )


FAMILIES = {
    "vit": lambda tmp_path: classification(tmp_path, tiny_vit()),
    "resnet": lambda tmp_path: classification(tmp_path, tiny_resnet(seed=4)),
    "deit_two_head": lambda tmp_path: classification(tmp_path, two_head_deit()),
    "projectors": lambda tmp_path: classification(tmp_path, tiny_vit(), FeatureKDTrainer, projector="vkd"),
    "detection": detection,
}


def saved_student(folder, like):
    """The checkpoint's student as transformers itself loads it (its own key-layout mapping)."""
    auto = AutoModelForObjectDetection if "Detr" in type(like).__name__ else AutoModelForImageClassification
    if "WithTeacher" in type(like).__name__:
        auto = type(like)
    return auto.from_pretrained(folder).state_dict()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_best_checkpoints_weights_are_loaded_exactly(tmp_path, family):
    trainer = FAMILIES[family](tmp_path)
    trainer.train()
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-1")
    wrapper = trainer.accelerator.unwrap_model(trainer.model)
    student = getattr(wrapper, "student", wrapper)
    best, last = (
        saved_student(tmp_path / "checkpoint-1", student),
        saved_student(tmp_path / "checkpoint-3", student),
    )
    loaded = student.state_dict()
    assert loaded.keys() == best.keys()
    differ = [name for name in loaded if not torch.equal(loaded[name], best[name])]
    assert differ == [], f"{len(differ)} of {len(loaded)} tensors are not the best checkpoint's: {differ[:5]}"
    assert any(not torch.equal(best[name], last[name]) for name in best)  # the two checkpoints differ
    if hasattr(wrapper, "projectors"):  # the projectors come from the same checkpoint
        saved = load_file(tmp_path / "checkpoint-1" / "projectors.safetensors")
        current = wrapper.projectors.state_dict()
        assert saved.keys() == current.keys()
        assert all(torch.equal(saved[name], current[name]) for name in saved)
