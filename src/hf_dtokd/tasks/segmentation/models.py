"""Semantic-segmentation models by Hub id or folder, and their per-pixel logits.

Models whose output is per-pixel class logits ``(B, C, h, w)`` (``AutoModelForSemanticSegmentation``: SegFormer,
UperNet, DPT, BEiT, MobileViT...) are supported. Mask-classification models (MaskFormer, Mask2Former, OneFormer)
predict per-query masks and classes instead; they are refused with that reason.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForSemanticSegmentation, PreTrainedModel

from hf_dtokd.models.classification import OFFLINE_HINT, check_model_reference


def load_semantic_segmenter(name_or_path: str, role: str, **init_kwargs: Any) -> PreTrainedModel:
    """``AutoModelForSemanticSegmentation.from_pretrained``; ``role`` names the model in the error."""
    check_model_reference(name_or_path, role)
    try:
        model = AutoModelForSemanticSegmentation.from_pretrained(name_or_path, **init_kwargs)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(
            f"could not load the {role} segmentation model {name_or_path!r}: {error}\n{OFFLINE_HINT}"
        ) from error
    check_segmenter(model, role)
    return model


def check_segmenter(model: Any, role: str) -> None:
    """Refuse a model that does not predict per-pixel class logits (see the module docstring)."""
    name = type(model).__name__
    if "Segmentation" not in name or "Universal" in name or "Instance" in name or "Panoptic" in name:
        raise ValueError(
            f"the {role} {name} is not a semantic-segmentation model with per-pixel logits; SegmentationKDTrainer "
            "distils AutoModelForSemanticSegmentation models (SegFormer, UperNet, DPT, BEiT, ...). Mask-"
            "classification models (MaskFormer, Mask2Former, OneFormer) predict per-query masks, not per-pixel "
            "logits, and are not supported"
        )


def segmentation_logits(outputs: Any) -> torch.Tensor:
    """The ``(B, C, h, w)`` logits of a semantic-segmentation output."""
    logits = outputs["logits"] if hasattr(outputs, "keys") and "logits" in outputs.keys() else None
    if logits is None or logits.dim() != 4:
        shape = None if logits is None else tuple(logits.shape)
        raise ValueError(
            f"the model returned {type(outputs).__name__} without per-pixel logits of shape (B, C, h, w) (logits: "
            f"{shape}); SegmentationKDTrainer needs an AutoModelForSemanticSegmentation model"
        )
    return logits
