"""Mixed precision: fp8 through accelerate's torchao recipe (emulated on CPU), and the bad combinations."""

import importlib.util

import pytest
import torch

from hf_dtokd import DTOKDTrainer
from hf_dtokd.runtime.precision import fp8_convertible_layers
from testing_utils import random_images, tiny_args, tiny_vit, train_logs

torchao = pytest.importorskip("torchao")  # in the dev extra; the fp8 path cannot be exercised without it


def flat(model):
    return torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])


def test_fp8_ao_converts_the_students_linears_not_the_teacher_and_trains(tmp_path):
    from torchao.float8.float8_linear import Float8Linear

    student, teacher = tiny_vit(seed=0), tiny_vit(seed=5)  # a ViT teacher: its Linears would convert too
    expected = fp8_convertible_layers(student)
    # first (layer 0's query) and last (classifier) Linear stay; every other Linear has dims divisible by 16
    assert "vit.layers.0.attention.q_proj" not in expected and "classifier" not in expected
    assert "vit.layers.0.mlp.fc1" in expected and len(expected) == 5
    teacher_dtypes = []
    teacher.vit.layers[0].mlp.fc1.register_forward_hook(lambda m, i, o: teacher_dtypes.append(o.dtype))
    student_before = flat(student).clone()
    args = tiny_args(tmp_path, method="dto", max_steps=2, fp8_backend="ao", fp8_emulate=True, temperature=2.0)
    trainer = DTOKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=random_images(16))
    assert trainer.accelerator.mixed_precision == "fp8" and trainer.accelerator.fp8_backend == "AO"
    trainer.train()
    modules = dict(trainer.model.named_modules())
    assert sorted(n for n, m in modules.items() if isinstance(m, Float8Linear)) == sorted(expected)
    assert not any(isinstance(m, Float8Linear) for m in trainer.teacher.modules())
    assert teacher_dtypes and set(teacher_dtypes) == {torch.bfloat16}  # the teacher runs in bf16 autocast
    assert all(torch.isfinite(torch.tensor(train_logs(trainer, key))).all() for key in ("loss", "pi_distill"))
    assert not torch.allclose(flat(trainer.model), student_before)


def test_fp8_with_bf16_is_refused_because_the_trainer_would_turn_it_off(tmp_path):
    with pytest.raises(ValueError, match="turn fp8 off"):
        tiny_args(tmp_path, fp8_backend="ao", bf16=True)


def test_launcher_fp8_with_bf16_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(ValueError, match="launched with mixed_precision fp8"):
        tiny_args(tmp_path, bf16=True)


def test_fp8_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="fp8_emulate applies to fp8_backend='ao'"):
        tiny_args(tmp_path, fp8_emulate=True)
    with pytest.raises(ValueError, match="valid values: ao, te"):
        tiny_args(tmp_path, fp8_backend="msamp")


@pytest.mark.skipif(
    importlib.util.find_spec("transformer_engine") is not None, reason="TransformerEngine installed"
)
def test_a_missing_fp8_package_is_named(tmp_path):
    with pytest.raises(ImportError, match=r"needs the 'transformer_engine' package.*pip install"):
        tiny_args(tmp_path, fp8_backend="te")


def test_the_demo_students_fp8_layers_are_the_ones_the_readme_names():
    from hf_dtokd.demos.digits import build_student

    student = build_student(0, [str(i) for i in range(10)])
    linears = [name for name, m in student.named_modules() if isinstance(m, torch.nn.Linear)]
    kept = sorted(set(linears) - set(fp8_convertible_layers(student)))
    assert kept == ["classifier", "vit.layers.0.attention.q_proj"] and len(linears) == 25
