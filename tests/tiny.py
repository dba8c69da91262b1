"""Tiny models and data for the tests: built from configs, never downloaded."""

from __future__ import annotations

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features, Sequence, Value
from transformers import ResNetConfig, ResNetForImageClassification, ViTConfig, ViTForImageClassification

NUM_LABELS = 4
IMAGE_SIZE = 16


# one 1-layer, width-16 transformer shape for every ViT-like tiny model (ViT, DeiT), dropout off
TINY_VIT = dict(
    patch_size=4,
    num_channels=3,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def tiny_vit(
    seed: int = 0, num_labels: int = NUM_LABELS, image_size: int = IMAGE_SIZE
) -> ViTForImageClassification:
    torch.manual_seed(seed)
    return ViTForImageClassification(ViTConfig(**TINY_VIT, image_size=image_size, num_labels=num_labels))


def tiny_resnet(seed: int = 1, num_labels: int = NUM_LABELS) -> ResNetForImageClassification:
    torch.manual_seed(seed)
    config = ResNetConfig(
        num_channels=3,
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        num_labels=num_labels,
    )
    return ResNetForImageClassification(config)


def random_images(
    n: int = 16, seed: int = 0, image_size: int = IMAGE_SIZE, num_labels: int = NUM_LABELS
) -> Dataset:
    rng = np.random.default_rng(seed)
    pixels = rng.standard_normal((n, 3, image_size, image_size)).astype(np.float32)
    labels = rng.integers(0, num_labels, n)
    features = Features(
        {
            "pixel_values": Sequence(Sequence(Sequence(Value("float32")))),
            "labels": ClassLabel(num_classes=num_labels),
        }
    )
    return Dataset.from_dict(
        {"pixel_values": pixels.tolist(), "labels": labels.tolist()}, features=features
    ).with_format("torch")


def partly_labelled(dataset: Dataset, labelled: set[int]) -> Dataset:
    """The rows outside ``labelled`` marked unlabelled (label -100: distillation loss only)."""
    dataset = dataset.cast_column("labels", Value("int64"))
    return dataset.map(lambda row, i: {"labels": row["labels"] if i in labelled else -100}, with_indices=True)


def conflicting_pair() -> tuple[ViTForImageClassification, ResNetForImageClassification]:
    """A student/teacher pair whose per-loss log-gradients conflict on ``random_images(16)``.

    Found by search (cos(g_d, g_t) ~ -0.85 at T = 2): exact DTO-KD's pi is then strictly inside
    (0, 1), where the equal-contribution property can be checked.
    """
    student, teacher = tiny_vit(seed=2), tiny_resnet(seed=12)
    with torch.no_grad():
        teacher.classifier[-1].weight.mul_(20.0)
        teacher.classifier[-1].bias.mul_(20.0)
    return student, teacher


def tiny_args(output_dir, **overrides):
    from hf_dtokd import DTOKDConfig

    defaults = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=16,
        max_steps=1,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        learning_rate=0.1,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        seed=0,
        data_seed=0,
    )
    defaults.update(overrides)
    return DTOKDConfig(**defaults)


def whole_batch(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    rows = dataset[:]
    return torch.as_tensor(rows["pixel_values"]), torch.as_tensor(rows["labels"])


def train_logs(trainer, key: str) -> list[float]:
    return [
        entry[key] for entry in trainer.state.log_history if key in entry and "train_runtime" not in entry
    ]


def family_students(num_labels: int = NUM_LABELS) -> dict:
    """One tiny student per supported family, all taking 16x16 RGB inputs."""
    from transformers import (
        ConvNextConfig,
        ConvNextForImageClassification,
        DeiTConfig,
        DeiTForImageClassification,
        RegNetConfig,
        RegNetForImageClassification,
        SwinConfig,
        SwinForImageClassification,
        TimmWrapperConfig,
        TimmWrapperForImageClassification,
    )

    return {
        "vit": lambda: tiny_vit(num_labels=num_labels),
        "deit": lambda: DeiTForImageClassification(
            DeiTConfig(**TINY_VIT, image_size=IMAGE_SIZE, num_labels=num_labels)
        ),
        "swin": lambda: SwinForImageClassification(
            SwinConfig(
                image_size=16,
                patch_size=2,
                embed_dim=8,
                depths=[1, 1],
                num_heads=[1, 1],
                window_size=2,
                num_labels=num_labels,
            )  # fmt: skip
        ),
        "resnet": lambda: tiny_resnet(num_labels=num_labels),
        "convnext": lambda: ConvNextForImageClassification(
            ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=num_labels)
        ),
        "regnet": lambda: RegNetForImageClassification(
            RegNetConfig(
                embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], groups_width=8, num_labels=num_labels
            )
        ),
        "timm_vit": lambda: TimmWrapperForImageClassification(
            TimmWrapperConfig(
                architecture="test_vit", num_labels=num_labels, model_args={"img_size": 16, "patch_size": 4}
            )
        ),
    }


def console_script(name: str) -> str:
    """The installed console script ``name`` of the environment running the tests (its ``bin/`` need not be on
    PATH: ``make test`` runs ``.venv/bin/python`` without activating the environment)."""
    import os
    import shutil
    import sys

    beside = os.path.join(os.path.dirname(sys.executable), name)
    found = beside if os.access(beside, os.X_OK) else shutil.which(name)
    assert found, f"{name} is not installed: pip install -e ."
    return found
