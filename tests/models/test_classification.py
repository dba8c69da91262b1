"""Loading teachers / students by id or folder, and pairing their label spaces."""

import pytest
import torch
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

from hf_dtokd.models.classification import check_label_spaces, load_image_classifier
from testing_utils import tiny_resnet, tiny_vit


def test_unloadable_id_names_the_id_and_the_offline_hint():
    with pytest.raises(ValueError, match=r"(?s)could not load the teacher 'nobody/not-a-model-xyz'.*offline"):
        load_image_classifier("nobody/not-a-model-xyz", "teacher")


def test_timm_model_saved_locally_loads_through_the_auto_class(tmp_path):
    model = TimmWrapperForImageClassification(TimmWrapperConfig(architecture="test_resnet", num_labels=4))
    model.save_pretrained(tmp_path)
    loaded = load_image_classifier(str(tmp_path), "teacher")
    assert type(loaded).__name__ == "TimmWrapperForImageClassification"
    x = torch.randn(2, 3, 16, 16)
    model.eval(), loaded.eval()
    assert torch.allclose(model(pixel_values=x).logits, loaded(pixel_values=x).logits)


def test_transformers_model_saved_locally_loads_with_init_kwargs(tmp_path):
    tiny_resnet().save_pretrained(tmp_path)
    loaded = load_image_classifier(str(tmp_path), "teacher", dtype=torch.bfloat16)
    assert next(loaded.parameters()).dtype == torch.bfloat16


def test_label_spaces_must_match_in_size():
    with pytest.raises(
        ValueError, match="the teacher has 5 classes and the student 4.*teacher_label_indices"
    ):
        check_label_spaces(tiny_vit(num_labels=4), tiny_resnet(num_labels=5), None)


def test_label_names_must_match():
    student, teacher = tiny_vit(), tiny_resnet()
    student.config.id2label = {0: "cat", 1: "dog", 2: "fox", 3: "owl"}
    teacher.config.id2label = {0: "cat", 1: "dog", 2: "owl", 3: "fox"}
    with pytest.raises(ValueError, match="id2label differ at 2 classes"):
        check_label_spaces(student, teacher, None)
    teacher.config.id2label = dict(student.config.id2label)
    assert check_label_spaces(student, teacher, None) is None


def test_label_mapping_selects_teacher_classes():
    index = check_label_spaces(tiny_vit(num_labels=2), tiny_resnet(num_labels=5), [4, 1])
    assert index.tolist() == [4, 1]
    with pytest.raises(ValueError, match="has 1 entries but the student has 2"):
        check_label_spaces(tiny_vit(num_labels=2), tiny_resnet(num_labels=5), [4])
    with pytest.raises(ValueError, match=r"outside the teacher's classes \[0, 5\)"):
        check_label_spaces(tiny_vit(num_labels=2), tiny_resnet(num_labels=5), [4, 7])
