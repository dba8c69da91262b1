"""Detectors by Hub id (a local folder: the same code path) and assembled from a backbone and a fresh head."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForObjectDetection,
    ResNetConfig,
    ResNetForImageClassification,
    SwinConfig,
    SwinForImageClassification,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
    YolosConfig,
)

from hf_dtokd import build_detector, load_object_detector
from hf_dtokd.tasks.detection.models import DETECTION_HEADS, detection_predictions, is_softmax_head

ID2LABEL = {0: "circle", 1: "square", 2: "triangle"}
SMALL_HEAD = dict(
    d_model=32,
    encoder_layers=1,
    decoder_layers=2,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    num_queries=6,
)


@pytest.fixture(scope="module")
def backbones(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, dict[str, torch.Tensor]]]:
    """Three backbones saved with save_pretrained, with the tensors their loading must reproduce."""
    root = tmp_path_factory.mktemp("backbones")
    torch.manual_seed(0)
    resnet = ResNetForImageClassification(
        ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1] * 4)
    )
    swin = SwinForImageClassification(
        SwinConfig(
            image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1], num_heads=[1, 2, 4], window_size=4
        )
    )
    timm = TimmWrapperForImageClassification(TimmWrapperConfig(architecture="resnet10t", num_labels=5))
    saved = {}
    for name, model, key in (
        ("resnet", resnet, "resnet.encoder.stages.3.layers.0.layer.1.convolution.weight"),
        ("swin", swin, "swin.encoder.layers.2.blocks.0.attention.q_proj.weight"),
        ("timm", timm, "timm_model.layer4.0.conv1.weight"),
    ):
        model.save_pretrained(root / name)
        saved[name] = (str(root / name), {key: model.state_dict()[key].clone()})
    return saved


def _find(model: torch.nn.Module, tensor: torch.Tensor) -> bool:
    return any(p.shape == tensor.shape and torch.equal(p, tensor) for p in model.state_dict().values())


@pytest.mark.parametrize("head", DETECTION_HEADS[:2] + ("deformable_detr", "rt_detr", "d_fine"))
@pytest.mark.parametrize("backbone", ["resnet", "swin", "timm"])
def test_a_head_on_a_saved_backbone_loads_the_backbone_weights(backbones, head: str, backbone: str) -> None:
    path, expected = backbones[backbone]
    extra = {"encoder_hidden_dim": 32} if head in ("rt_detr", "d_fine") else {}
    model = build_detector(head, path, ID2LABEL, **SMALL_HEAD, **extra)
    assert model.config.model_type == head and model.config.id2label == ID2LABEL
    (tensor,) = expected.values()
    assert _find(model, tensor), f"the backbone weight was not placed in {head}"
    model.eval()
    outputs = model(pixel_values=torch.randn(1, 3, 64, 64))
    logits, boxes = detection_predictions(outputs)
    assert boxes.shape == (1, 6, 4) and logits.shape[:2] == (1, 6)


def test_a_backbone_config_gives_random_weights_and_unknown_heads_are_refused() -> None:
    model = build_detector(
        "detr", ResNetConfig(hidden_sizes=[8, 8, 16, 16], embedding_size=8), ID2LABEL, **SMALL_HEAD
    )
    assert model.config.backbone_config.out_indices == [4]
    with pytest.raises(ValueError, match="valid values: detr"):
        build_detector("faster_rcnn", ResNetConfig(), ID2LABEL)


def test_backbone_weights_that_do_not_fit_are_refused(backbones, tmp_path) -> None:
    other = ResNetForImageClassification(
        ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[2] * 4)
    )
    other.save_pretrained(tmp_path / "deeper")
    # the same family but another depth: its weights name layers the head's backbone (built from the same
    # config) has, so they fit; a mismatch arises only when the config and the weights differ
    build_detector("detr", str(tmp_path / "deeper"), ID2LABEL, **SMALL_HEAD)
    from hf_dtokd.tasks.detection.models import _place_backbone_weights

    model = build_detector("detr", backbones["resnet"][0], ID2LABEL, **SMALL_HEAD)
    with pytest.raises(ValueError, match="do not fit"):
        _place_backbone_weights(model, other.state_dict(), set(other.state_dict()), "deeper")


def test_a_detector_saved_locally_loads_by_path_and_a_missing_one_names_the_offline_fix(tmp_path) -> None:
    model = build_detector(
        "conditional_detr",
        ResNetConfig(hidden_sizes=[8, 8, 16, 16], embedding_size=8),
        ID2LABEL,
        **SMALL_HEAD,
    )
    model.save_pretrained(tmp_path / "detector")
    loaded = load_object_detector(str(tmp_path / "detector"), "teacher")
    assert type(loaded) is type(model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    with pytest.raises(ValueError, match="(?s)could not load the student detector .*save_pretrained"):
        load_object_detector("someone/missing-detector", "student")  # a Hub id, offline
    with pytest.raises(
        ValueError, match="(?s)the student .*missing' is neither a local folder.*save_pretrained"
    ):
        load_object_detector(str(tmp_path / "missing"), "student")  # a path: refused before any loading


def test_head_kinds_and_denoising_queries() -> None:
    yolos = AutoModelForObjectDetection.from_config(
        YolosConfig(
            image_size=[32, 32],
            patch_size=16,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            num_detection_tokens=5,
            num_labels=3,
        )
    )
    yolos.eval()
    logits, _ = detection_predictions(yolos(pixel_values=torch.randn(1, 3, 32, 32)))
    assert is_softmax_head(logits, 3)  # C + 1 outputs
    rt = build_detector(
        "rt_detr",
        ResNetConfig(hidden_sizes=[8, 8, 16, 16], embedding_size=8),
        ID2LABEL,
        **SMALL_HEAD,
        encoder_hidden_dim=32,
        num_denoising=10,
    )
    rt.train()
    labels = [{"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.3]])}]
    outputs = rt(pixel_values=torch.randn(1, 3, 64, 64), labels=labels)
    assert outputs.logits.shape[1] > 6  # denoising queries come first in training
    logits, boxes = detection_predictions(outputs)
    assert logits.shape[1] == boxes.shape[1] == 6 and not is_softmax_head(logits, 3)
    with pytest.raises(ValueError, match="expected 4"):
        is_softmax_head(torch.zeros(1, 2, 7), 4)
