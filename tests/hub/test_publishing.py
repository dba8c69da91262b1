"""Publishing and watching: student-only push with a model card, and the trade-off plot callback."""

import pytest
import torch
import yaml
from transformers import AutoImageProcessor, AutoModelForImageClassification, ViTImageProcessor

from hf_dtokd import DTOKDTrainer
from hf_dtokd.hub.plotting import plot_tradeoff
from testing_utils import random_images, tiny_args, tiny_resnet, tiny_vit


def processor():
    return ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def test_push_uploads_the_student_alone_with_a_model_card(tmp_path, hub):
    tiny_resnet().save_pretrained(tmp_path / "teacher")
    args = tiny_args(
        tmp_path / "out",
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
        logging_steps=1,
        teacher_model_name_or_path=str(tmp_path / "teacher"),
        hub_strategy="end",
        eval_strategy="steps",
        eval_steps=4,
    )
    trainer = DTOKDTrainer(
        model=tiny_vit(),
        args=args,
        train_dataset=random_images(16),
        eval_dataset=random_images(8, seed=3),
        processing_class=processor(),
    )
    trainer.train()
    trainer.push_to_hub(finetuned_from="tiny/vit-base", dataset="random-images", tasks="image-classification")

    (upload,) = hub.uploads
    files = upload["files"]
    assert upload["repo_id"] == "someone/out"
    for expected in (
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "README.md",
        "tradeoff.png",
    ):
        assert expected in files, files
    assert not any(f.startswith("checkpoint-") for f in files)
    assert not any("dtokd_state" in f or "teacher" in f for f in files), files
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert all(not key.startswith(("teacher", "balancer")) for key in weights)
    assert sum(t.numel() for t in weights.values()) == sum(p.numel() for p in tiny_vit().parameters())

    card = (tmp_path / "out" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert {"knowledge-distillation", "dto-kd"} <= set(front["tags"])
    assert front["base_model"] == "tiny/vit-base"
    for text in (
        "## Distillation",
        f"teacher: `{tmp_path / 'teacher'}`",
        "trade-off method: `dto`",
        "`temperature=4.0`",
        "`gradient_placement='parameters'`",
        "`pi_distill`",
        "`grad_cos`",
        "Final evaluation:",
        "![pi, gradient conflict and dominance over training](tradeoff.png)",
    ):
        assert text in card, text

    reloaded = AutoModelForImageClassification.from_pretrained(str(tmp_path / "out")).eval()
    AutoImageProcessor.from_pretrained(str(tmp_path / "out"))
    x = torch.randn(2, 3, 16, 16)
    trainer.model.eval()
    with torch.no_grad():
        assert torch.allclose(
            reloaded(pixel_values=x).logits, trainer.model(pixel_values=x).logits, atol=1e-6
        )


def test_card_section_for_other_methods_names_their_hyper_parameters(tmp_path):
    args = tiny_args(tmp_path, method="dot", max_steps=2, alpha=0.9)
    trainer = DTOKDTrainer(
        model=tiny_vit(), teacher_model=tiny_resnet(), args=args, train_dataset=random_images(16)
    )
    trainer.train()
    trainer.create_model_card(finetuned_from="tiny/vit-base")
    card = (tmp_path / "README.md").read_text()
    assert "trade-off method: `dot`" in card and "`alpha=0.9`" in card and "`dot_delta=0.075`" in card
    assert "teacher: `ResNetForImageClassification`" in card
    assert "Warning" not in card  # a method to compare against: no experiment warning


def test_an_experimental_method_warns_at_config_time_and_on_the_card(tmp_path):
    with pytest.warns(
        UserWarning, match="method='dot_adamw' is an experiment, not a method to compare against"
    ):
        args = tiny_args(tmp_path, method="dot_adamw", max_steps=2)
    trainer = DTOKDTrainer(
        model=tiny_vit(), teacher_model=tiny_resnet(), args=args, train_dataset=random_images(16)
    )
    trainer.train()
    trainer.create_model_card(finetuned_from="tiny/vit-base")
    card = (tmp_path / "README.md").read_text()
    assert (
        "> **Warning:** method='dot_adamw' is an experiment" in card
        and "trade-off method: `dot_adamw`" in card
    )


def test_the_plot_is_written_at_each_save_and_at_the_end(tmp_path):
    saved_at = []

    from transformers import TrainerCallback

    class Watch(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            plot = tmp_path / "tradeoff.png"
            saved_at.append((state.global_step, plot.is_file() and plot.stat().st_mtime_ns))

    args = tiny_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2, logging_steps=1)
    trainer = DTOKDTrainer(
        model=tiny_vit(), teacher_model=tiny_resnet(), args=args, train_dataset=random_images(16)
    )
    trainer.add_callback(Watch())  # after the trainer's own callbacks: sees what they wrote at this save
    trainer.train()
    plot = tmp_path / "tradeoff.png"
    assert plot.is_file() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [step for step, _ in saved_at] == [2, 4] and all(mtime for _, mtime in saved_at)
    off = tiny_args(tmp_path / "off", max_steps=2, plot_tradeoff=False)
    DTOKDTrainer(
        model=tiny_vit(), teacher_model=tiny_resnet(), args=off, train_dataset=random_images(16)
    ).train()
    assert not (tmp_path / "off" / "tradeoff.png").exists()


def test_plot_covers_every_objective_and_refuses_an_empty_history(tmp_path):
    history = [
        {
            "step": s,
            "pi_distill": 0.5,
            "pi_distill_t1": 0.2,
            "grad_cos": -0.1,
            "grad_cos_distill_t1": 0.3,
            "grad_norm_ratio": 2.0,
            "task_loss": 1.0,
            "distill_loss": 0.5,
            "distill_t1_loss": 0.4,
        }
        for s in (1, 2, 3)
    ]
    path = plot_tradeoff({"run": history}, tmp_path / "plots" / "p.png")
    assert path.is_file()
    with pytest.raises(ValueError, match="no trade-off scalar was logged"):
        plot_tradeoff({"run": [{"step": 1, "loss": 1.0}]}, tmp_path / "q.png")


def test_nothing_prints_per_step_outside_the_trainers_logging(tmp_path, capsys):
    args = tiny_args(tmp_path, max_steps=3, logging_steps=10, disable_tqdm=False)
    DTOKDTrainer(
        model=tiny_vit(), teacher_model=tiny_resnet(), args=args, train_dataset=random_images(16)
    ).train()
    out = capsys.readouterr().out
    assert "pi_distill" not in out and "grad_cos" not in out
