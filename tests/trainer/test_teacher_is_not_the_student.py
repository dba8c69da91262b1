"""The teacher being the student (or sharing its weights) is refused before anything is frozen."""

import pytest

from hf_dtokd import DetectionKDTrainer, DTOKDTrainer, FeatureKDTrainer
from testing_utils import detection_args, random_images, tiny_args, tiny_detr, tiny_vit


def all_trainable(model) -> bool:
    return all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("trainer_class", [DTOKDTrainer, FeatureKDTrainer])
def test_the_student_passed_as_its_own_teacher_is_refused_and_stays_trainable(tmp_path, trainer_class):
    student = tiny_vit()
    with pytest.raises(ValueError, match="the teacher is the student object itself"):
        trainer_class(
            model=student, teacher_model=student, args=tiny_args(tmp_path), train_dataset=random_images(8)
        )
    assert all_trainable(student) and student.training


def test_a_teacher_sharing_a_weight_with_the_student_is_refused(tmp_path):
    student, teacher = tiny_vit(), tiny_vit(seed=1)
    teacher.classifier.weight = student.classifier.weight  # tied by mistake
    with pytest.raises(
        ValueError, match=r"shares 1 weight tensor\(s\) with the student \(classifier.weight\)"
    ):
        DTOKDTrainer(
            model=student, teacher_model=teacher, args=tiny_args(tmp_path), train_dataset=random_images(8)
        )
    assert all_trainable(student)


def test_a_detector_as_its_own_teacher_is_refused(tmp_path):
    student = tiny_detr(0)
    trainable = [p.requires_grad for p in student.parameters()]  # DETR builds some frozen backbone weights
    with pytest.raises(ValueError, match="the teacher is the student object itself"):
        DetectionKDTrainer(model=student, teacher_model=student, args=detection_args(tmp_path))
    assert [p.requires_grad for p in student.parameters()] == trainable


def test_a_copy_is_a_teacher_of_its_own(tmp_path):
    import copy

    student = tiny_vit()
    DTOKDTrainer(
        model=student,
        teacher_model=copy.deepcopy(student),
        args=tiny_args(tmp_path),
        train_dataset=random_images(8),
    )
    assert all_trainable(student)
