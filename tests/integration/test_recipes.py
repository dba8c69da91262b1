"""Each recipe in examples/recipes runs 2 steps on CPU through its script, with tiny stand-ins: the models are
built from configs and saved to folders (the same from_pretrained path as a Hub id), and loading the dataset
by name returns a local dataset of the same columns. Everything else is the recipe's own setting."""

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage
from transformers import (
    DeiTConfig,
    DeiTForImageClassification,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
    ViTImageProcessor,
)

import hf_dtokd.cli.classify as classify
import hf_dtokd.cli.detect as detect
from hf_dtokd.data import generate_shapes
from hf_dtokd.tasks.detection.models import detection_processor
from testing_utils import tiny_detr

RECIPES = Path(__file__).resolve().parents[2] / "examples" / "recipes"
#: what the stand-in run changes in a recipe: where things are, the size of the run, and the CPU
STAND_IN = {
    "max_steps": 2,
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 8,
    "dataloader_num_workers": 0,
    "dataloader_persistent_workers": False,
    "use_cpu": True,
    "report_to": "none",
    "logging_steps": 1,
    "disable_tqdm": True,
}


def images_dataset(n: int, classes: list[str], seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    images = [PILImage.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]
    features = Features({"image": Image(), "label": ClassLabel(names=classes)})
    return Dataset.from_dict(
        {"image": images, "label": [i % len(classes) for i in range(n)]}, features=features
    )


@pytest.mark.parametrize("recipe", ["deit_tiny_imagenet.json", "deit_small_imagenet.json"])
def test_imagenet_recipe_runs_two_steps_with_stand_ins(tmp_path, monkeypatch, recipe):
    settings = json.loads((RECIPES / recipe).read_text())
    assert settings["dataset_name"] == "ILSVRC/imagenet-1k" and settings["augmentation"] == "deit"
    assert settings["teacher_model_name_or_path"] == "timm/regnety_160.deit_in1k"
    classes = ["tench", "goldfish", "shark", "hen"]
    student, teacher = tmp_path / "deit", tmp_path / "regnety"
    DeiTForImageClassification(
        DeiTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=len(classes),
        )
    ).save_pretrained(student)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(student)
    TimmWrapperForImageClassification(
        TimmWrapperConfig(architecture="regnety_002", num_labels=len(classes))
    ).save_pretrained(teacher)
    requested = []

    def load_dataset(name, config_name=None):
        requested.append(name)
        return DatasetDict(
            {"train": images_dataset(12, classes, 0), "validation": images_dataset(8, classes, 1)}
        )

    monkeypatch.setattr(classify, "load_dataset", load_dataset)
    run = {
        **settings,
        **STAND_IN,
        "model_name_or_path": str(student),
        "teacher_model_name_or_path": str(teacher),
        "output_dir": str(tmp_path / "out"),
        "optim": "adamw_torch",
    }
    (tmp_path / "run.json").write_text(json.dumps(run))
    metrics = classify.main([str(tmp_path / "run.json")])
    assert requested == ["ILSVRC/imagenet-1k"]
    assert metrics["train_loss"] > 0 and 0.0 <= metrics["eval_top1"] <= 1.0
    history = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    assert [row["step"] for row in history if "pi_distill" in row] == [1, 2]
    assert all("feature_loss" in row for row in history if "pi_distill" in row)  # grouped: two objectives


def test_coco_recipe_runs_two_steps_with_stand_ins(tmp_path, monkeypatch):
    settings = json.loads((RECIPES / "rtdetr_coco.json").read_text())
    assert settings["dataset_name"] == "detection-datasets/coco" and settings["num_train_epochs"] == 50
    student, teacher = tmp_path / "student", tmp_path / "teacher"
    tiny_detr(0).save_pretrained(student)
    detection_processor("detr", 32).save_pretrained(student)
    tiny_detr(1).save_pretrained(teacher)
    shapes = generate_shapes(12, image_size=32, seed=0)
    monkeypatch.setattr(
        detect,
        "load_dataset",
        lambda name: DatasetDict(
            {settings["train_split"]: shapes, settings["eval_split"]: shapes.select(range(6))}
        ),
    )
    run = {
        **settings,
        **STAND_IN,
        "model_name_or_path": str(student),
        "teacher_model_name_or_path": str(teacher),
        "output_dir": str(tmp_path / "out"),
        "image_size": 32,
        "bf16": False,  # DETR's Hungarian matcher on CPU: the stand-in keeps float32
    }
    (tmp_path / "run.json").write_text(json.dumps(run))
    metrics = detect.main([str(tmp_path / "run.json")])
    assert "eval_map" in metrics
    history = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    assert [row["step"] for row in history if "pi_distill" in row] == [1, 2]
