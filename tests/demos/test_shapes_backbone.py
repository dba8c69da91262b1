"""The detection demo's pretrained student backbone: its class-agnostic data, its cache, its weights in the
students."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import ResNetBackbone

from hf_dtokd.data import generate_shapes
from hf_dtokd.demos.shapes import build_model, processor
from hf_dtokd.demos.shapes_backbone import OBJECTNESS, class_agnostic_shapes, pretrain_backbone


def test_pretraining_images_are_the_shapes_with_one_class() -> None:
    rows = class_agnostic_shapes(6, 64, 3, seed=3, first_id=100)
    source = generate_shapes(6, 64, 3, seed=3, first_id=100)
    assert rows.features["objects"]["category"].feature.names == ["shape"]
    for agnostic, original in zip(rows["objects"], source["objects"]):
        assert agnostic["bbox"] == original["bbox"] and agnostic["category"] == [0] * len(
            original["category"]
        )
    assert rows["image_id"] == list(range(100, 106))


@pytest.mark.slow
def test_the_backbone_is_cached_and_its_weights_start_every_student(tmp_path) -> None:
    folder = tmp_path / "backbone"
    built = []

    def detector(id2label: dict[int, str]):
        built.append(id2label)
        return build_model("student", 1, 8, 32, id2label=id2label)

    shape = {"width": 8, "d_model": 32, "max_objects": 2}
    first = pretrain_backbone(folder, detector, processor(64), shape, num_images=8, steps=3, batch_size=4)
    assert built == [OBJECTNESS] and not first["cached"] and 0.0 <= first["objectness_map"] <= 1.0
    assert json.loads((folder / "demo_settings.json").read_text())["settings"]["steps"] == 3
    again = pretrain_backbone(folder, detector, processor(64), shape, num_images=8, steps=3, batch_size=4)
    assert again == {**first, "cached": True} and len(built) == 1  # reused, nothing built
    pretrained = ResNetBackbone.from_pretrained(folder).state_dict()
    key = "embedder.embedder.convolution.weight"
    # the pretraining moved the weights away from the detector's initialisation
    assert not torch.equal(
        pretrained[key], build_model("student", 1, 8, 32).state_dict()[f"model.backbone.model.{key}"]
    )
    students = [build_model("student", seed, 8, 32, str(folder)).state_dict() for seed in (0, 1)]
    assert all(torch.equal(s[f"model.backbone.model.{key}"], pretrained[key]) for s in students)  # every seed
    head = "model.enc_score_head.weight"
    assert not torch.equal(students[0][head], students[1][head])  # the head starts from the seed
    # other settings: trained again
    assert not pretrain_backbone(folder, detector, processor(64), shape, num_images=8, steps=4, batch_size=4)[
        "cached"
    ]
