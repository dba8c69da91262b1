"""Student pixels converted for a teacher with another resolution and normalisation."""

import pytest
import torch
import torch.nn.functional as F
from transformers import ViTImageProcessor

from hf_dtokd.trainer.teacher_inputs import PixelSpace, TeacherInputConverter


def test_from_processors_resize_and_renormalise():
    student = ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    teacher = ViTImageProcessor(
        size={"height": 24, "width": 24}, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]
    )
    converter = TeacherInputConverter(PixelSpace.from_processor(student), PixelSpace.from_processor(teacher))
    raw = torch.rand(2, 3, 16, 16)
    student_pixels = (raw - 0.5) / 0.5
    out = converter(student_pixels)
    resized = F.interpolate(raw, size=(24, 24), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert out.shape == (2, 3, 24, 24)
    assert torch.allclose(out, (resized - mean) / std, atol=1e-5)


def test_identical_spaces_are_the_identity():
    space = PixelSpace((0.5,), (0.5,), (16, 16))
    converter = TeacherInputConverter(space, space)
    x = torch.randn(1, 3, 16, 16)
    assert converter.is_identity and converter(x) is x


def test_timm_processor_data_config_is_read():
    from transformers import TimmWrapperImageProcessor

    processor = TimmWrapperImageProcessor(
        pretrained_cfg={"input_size": (3, 20, 20), "mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6)}
    )
    space = PixelSpace.from_processor(processor)
    assert space.size == (20, 20)
    assert space.mean == pytest.approx((0.1, 0.2, 0.3)) and space.std == pytest.approx((0.4, 0.5, 0.6))


def test_processor_without_statistics_is_refused():
    class NoStats:
        image_mean = None
        image_std = None

    with pytest.raises(ValueError, match="teacher_pixel_values"):
        PixelSpace.from_processor(NoStats())
