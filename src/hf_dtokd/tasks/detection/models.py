"""DETR-family detectors: loading by Hub id, assembling a student from a backbone and a fresh head, reading outputs.

``load_object_detector`` is ``AutoModelForObjectDetection.from_pretrained`` (DETR, Conditional / Deformable
DETR, RT-DETR, D-FINE, YOLOS...). ``build_detector`` assembles a student the way the paper's are built
(a Swin backbone with a light head): a detection head of one DETR family, fresh, on a backbone given by
Hub id or local folder (a transformers model with a backbone class, e.g. ResNet / Swin / ConvNext, or a
``timm/...`` model), with the backbone's weights loaded from that id. transformers builds the backbone
from ``backbone_config`` (``load_backbone``) but loads pretrained weights only through ``backbone="id"``
with a network call at construction; building from the config and copying the weights in afterwards
is the same result offline, with a check that every weight found its place.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoModelForObjectDetection,
    PretrainedConfig,
    PreTrainedModel,
    TimmBackboneConfig,
    TimmWrapperConfig,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING

from hf_dtokd.models.classification import OFFLINE_HINT, check_model_reference

#: Families whose head reads one backbone stage (the last); the others read several (multi-scale).
SINGLE_SCALE = ("detr", "conditional_detr", "table_transformer")
DETECTION_HEADS = ("detr", "conditional_detr", "deformable_detr", "rt_detr", "rt_detr_v2", "d_fine")


@contextmanager
def outside_zero3_init() -> Iterator[None]:
    """Build a detector whole even when a DeepSpeed ZeRO-3 config is active.

    Under ZeRO-3, transformers constructs models inside ``deepspeed.zero.Init``, which partitions each
    parameter as it is created; the DETR family's constructors then copy every backbone ``BatchNorm2d`` into a
    frozen batch norm (``replace_batch_norm``), reading the already partitioned (empty) weights, and fail with
    "The size of tensor a (8) must match the size of tensor b (0)". Detectors are small, so each process builds
    the whole model and DeepSpeed partitions it when the Trainer prepares it (ZeRO-3 converts parameters not
    created under ``zero.Init`` at its engine's start). transformers offers ``unset_hf_deepspeed_config`` and
    ``set_hf_deepspeed_config`` but no getter for the active config object: it is read from the module.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    if not hf_deepspeed.is_deepspeed_zero3_enabled():
        yield
        return
    active = hf_deepspeed._hf_deepspeed_config_weak_ref()
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(active)


def load_object_detector(name_or_path: str, role: str, **init_kwargs: Any) -> PreTrainedModel:
    """``AutoModelForObjectDetection.from_pretrained`` (built whole under ZeRO-3: ``outside_zero3_init``);
    ``role`` names the model in the error."""
    check_model_reference(name_or_path, role)
    try:
        with outside_zero3_init():
            return AutoModelForObjectDetection.from_pretrained(name_or_path, **init_kwargs)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(
            f"could not load the {role} detector {name_or_path!r}: {error}\n{OFFLINE_HINT}"
        ) from error


def _backbone_config(
    backbone: str | PretrainedConfig, out_indices: list[int] | None, single_scale: bool
) -> tuple:
    """(backbone config with ``out_indices``, the loaded backbone's state dict or None, keys it must place)."""
    config = AutoConfig.from_pretrained(backbone) if isinstance(backbone, str) else backbone
    if isinstance(config, TimmWrapperConfig):  # a timm/... Hub model: timm builds it features_only
        from transformers import TimmWrapperModel

        indices = out_indices or ([4] if single_scale else [2, 3, 4])
        backbone_config = TimmBackboneConfig(backbone=config.architecture, out_indices=indices)
        if not isinstance(backbone, str):
            return backbone_config, None, set()
        timm_model = TimmWrapperModel.from_pretrained(backbone).timm_model
        classifier = timm_model.pretrained_cfg.get("classifier", "fc")
        state = {k: v for k, v in timm_model.state_dict().items() if not k.startswith(f"{classifier}.")}
        return backbone_config, state, set(state)
    if isinstance(config, TimmBackboneConfig) or getattr(config, "stage_names", None) is None:
        if isinstance(config, TimmBackboneConfig):
            return config, None, set()
        raise ValueError(
            f"backbone {getattr(config, 'model_type', backbone)!r} has no backbone class (no stage_names); use a "
            "model with one (ResNet, Swin, ConvNext, ConvNextV2, DiNAT, ViTDet, RegNet via timm...) or a timm/... id"
        )
    stages = len(config.stage_names) - 1
    indices = out_indices or ([stages] if single_scale else list(range(max(1, stages - 2), stages + 1)))
    config_dict = config.to_dict()
    config_dict.pop("out_features", None)
    config_dict["out_indices"] = indices
    backbone_config = type(config).from_dict(config_dict)
    if not isinstance(backbone, str):
        return backbone_config, None, set()
    # the backbone class's own from_pretrained: AutoBackbone.from_pretrained asks the Hub whether the id exists
    # (a network call that also rejects local folders) before loading
    backbone_class = MODEL_FOR_BACKBONE_MAPPING[type(config)]
    loaded = backbone_class.from_pretrained(backbone, out_indices=indices)
    state = loaded.state_dict()
    return backbone_config, state, set(state)


def _place_backbone_weights(
    model: nn.Module, state: dict[str, torch.Tensor], required: set[str], name: str
) -> None:
    """Copy ``state`` into the submodule of ``model`` that holds every required key (same shapes)."""
    target = model.state_dict()
    required = {k for k in required if not k.endswith("num_batches_tracked")}  # frozen batch norms have none
    best, best_found = None, -1
    for prefix, _ in model.named_modules():
        head = f"{prefix}." if prefix else ""
        found = sum(1 for k in required if head + k in target and target[head + k].shape == state[k].shape)
        if found > best_found:
            best, best_found = head, found
    if best_found < len(required):
        missing = sorted(k for k in required if best + k not in target)[:5]
        raise ValueError(
            f"the weights of backbone {name!r} do not fit the detector's backbone ({len(required) - best_found} of "
            f"{len(required)} tensors unplaced, e.g. {missing}); pass out_indices matching the head, or the same "
            "backbone architecture"
        )
    with torch.no_grad():
        for key in required:
            target[best + key].copy_(state[key])
    model.load_state_dict(target)


def build_detector(
    head: str,
    backbone: str | PretrainedConfig,
    id2label: dict[int, str],
    out_indices: list[int] | None = None,
    **head_kwargs: Any,
) -> PreTrainedModel:
    """A ``head`` detector (a DETR-family ``model_type``) on ``backbone``, fresh head, backbone weights loaded.

    Args:
        head: one of ``DETECTION_HEADS`` (its config defaults, overridden by ``head_kwargs``).
        backbone: a Hub id / local folder (weights loaded) or a backbone config (random weights).
        id2label: the detector's classes.
        out_indices: backbone stages the head reads (default: the last for single-scale heads, the last
            three otherwise).
    """
    if head not in DETECTION_HEADS:
        raise ValueError(f"unknown detection head {head!r}; valid values: {', '.join(DETECTION_HEADS)}")
    with outside_zero3_init():
        return _build_detector(head, backbone, id2label, out_indices, **head_kwargs)


def _build_detector(
    head: str,
    backbone: str | PretrainedConfig,
    id2label: dict[int, str],
    out_indices: list[int] | None,
    **head_kwargs: Any,
) -> PreTrainedModel:
    single_scale = head in SINGLE_SCALE
    backbone_config, state, required = _backbone_config(backbone, out_indices, single_scale)
    kwargs: dict[str, Any] = {
        "backbone_config": backbone_config,
        "use_pretrained_backbone": False,
        "id2label": {int(k): v for k, v in id2label.items()},
        "label2id": {v: int(k) for k, v in id2label.items()},
    }
    config_class = type(AutoConfig.for_model(head))
    if "use_timm_backbone" in config_class().to_dict():
        kwargs["use_timm_backbone"] = False
    defaults = config_class()
    channels = list(AutoBackbone.from_config(backbone_config).channels)
    if not single_scale and "num_feature_levels" not in head_kwargs:  # one level per backbone stage read
        kwargs["num_feature_levels"] = len(channels)
    if (
        hasattr(defaults, "encoder_in_channels") and "encoder_in_channels" not in head_kwargs
    ):  # RT-DETR, D-FINE
        kwargs["encoder_in_channels"] = channels
        kwargs["feat_strides"] = list(defaults.feat_strides)[-len(channels) :]
        kwargs["decoder_in_channels"] = [head_kwargs.get("d_model", defaults.d_model)] * len(channels)
    kwargs.update(head_kwargs)
    config = AutoConfig.for_model(head, **kwargs)
    model = AutoModelForObjectDetection.from_config(config)
    if state is not None:
        _place_backbone_weights(model, state, required, str(backbone))
    return model


#: The image processor of each head family (D-FINE and RT-DETR v2 share RT-DETR's).
PROCESSORS = {
    "detr": "DetrImageProcessor",
    "conditional_detr": "ConditionalDetrImageProcessor",
    "deformable_detr": "DeformableDetrImageProcessor",
    "rt_detr": "RTDetrImageProcessor",
    "rt_detr_v2": "RTDetrImageProcessor",
    "d_fine": "RTDetrImageProcessor",
}


def detection_processor(head: str, image_size: int) -> Any:
    """The head family's image processor, resizing to ``image_size`` squares (built from defaults, offline)."""
    import transformers

    if head not in PROCESSORS:
        raise ValueError(f"unknown detection head {head!r}; valid values: {', '.join(PROCESSORS)}")
    return getattr(transformers, PROCESSORS[head])(size={"height": image_size, "width": image_size})


def detection_predictions(outputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, pred_boxes)`` of the matching queries (RT-DETR / D-FINE's denoising queries removed)."""
    logits, boxes = outputs["logits"], outputs["pred_boxes"]
    meta = outputs.get("denoising_meta_values") if hasattr(outputs, "get") else None
    if meta is not None and "dn_num_split" in meta:
        denoising = meta["dn_num_split"][0]
        logits, boxes = logits[:, denoising:], boxes[:, denoising:]
    return logits, boxes


def is_softmax_head(logits: torch.Tensor, num_labels: int) -> bool:
    """True for heads with a "no object" output (C + 1 softmax: DETR, YOLOS), False for sigmoid heads."""
    if logits.shape[-1] == num_labels + 1:
        return True
    if logits.shape[-1] == num_labels:
        return False
    raise ValueError(
        f"detector logits have {logits.shape[-1]} outputs for num_labels={num_labels}; expected {num_labels} "
        f"(sigmoid head) or {num_labels + 1} (softmax head with 'no object')"
    )
