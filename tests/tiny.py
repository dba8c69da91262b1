"""Tiny models and data for the tests: built from configs, never downloaded."""

from __future__ import annotations

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features, Sequence, Value
from transformers import ResNetConfig, ResNetForImageClassification, ViTConfig, ViTForImageClassification

NUM_LABELS = 4
IMAGE_SIZE = 16


def tiny_vit(
    seed: int = 0, num_labels: int = NUM_LABELS, image_size: int = IMAGE_SIZE
) -> ViTForImageClassification:
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=image_size,
        patch_size=4,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=num_labels,
    )
    return ViTForImageClassification(config)


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
