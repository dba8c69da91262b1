"""Smoke runs of the embedded default and of the example script, with a tiny budget."""

import json
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForImageClassification, ViTImageProcessor

from hf_dtokd.demos.digits import DemoArguments, run_demo
from testing_utils import tiny_resnet, tiny_vit

sys.path.insert(0, str(Path(__file__).parents[2] / "examples"))


def test_demo_runs_end_to_end_with_a_tiny_budget(tmp_path, capsys):
    demo = DemoArguments(
        output_dir=str(tmp_path), max_steps=3, teacher_steps=3, batch_size=16, logging_steps=1, seeds=2
    )
    summary = run_demo(demo)
    printed = capsys.readouterr().out
    for run in ("no_kd", "fixed", "dto", "dto_amortized"):
        assert f"student resnet, {run}" in printed
    assert "mean +- std over 2 seeds" in printed
    results = json.loads((tmp_path / "results.json").read_text())
    runs = ["no_kd", "fixed", "dto", "dto_amortized"]
    assert [(r["run"], r["seed"]) for r in results["students"]] == [(run, s) for s in (0, 1) for run in runs]
    assert all(0.0 <= r["top1"] <= 1.0 for r in results["students"])
    assert results["students"][2]["final_pi_distill"] is not None
    rows = {row["run"]: row for row in results["rows"]}
    fixed, no_kd = rows["fixed"], rows["no_kd"]
    paired = [f - n for f, n in zip(fixed["top1"], no_kd["top1"])]
    assert fixed["diff_to_no_kd"] == pytest.approx(sum(paired) / 2)
    assert fixed["diff_se"] == pytest.approx(abs(paired[0] - paired[1]) / 2)  # std / sqrt(2) of two values
    assert (tmp_path / "tradeoff.png").stat().st_size > 10_000
    assert (tmp_path / "teacher" / "config.json").is_file()
    # the no-KD run trains on the labelled images only, the distillation runs on the whole pool
    assert (
        summary["students"][0]["log_history"][-1]["epoch"]
        > summary["students"][1]["log_history"][-1]["epoch"]
    )
    # the cached teacher is reused by the next run
    cached = (tmp_path / "teacher" / "teacher_metrics.json").stat().st_mtime_ns
    run_demo(
        DemoArguments(
            output_dir=str(tmp_path), runs=["fixed"], max_steps=2, teacher_steps=3, batch_size=16, seeds=1
        )
    )
    assert (tmp_path / "teacher" / "teacher_metrics.json").stat().st_mtime_ns == cached
    assert summary["teacher"]["top1"] > 0.0
    # the opt-in signal runs: feature KD through a projector and the DeiT token, with DTO-KD and fixed alpha
    runs = ["feature_vkd_dto", "deit_token_fixed"]
    signals = run_demo(
        DemoArguments(
            output_dir=str(tmp_path),
            runs=runs,
            max_steps=2,
            teacher_steps=3,
            batch_size=16,
            logging_steps=1,
            seeds=1,
        )
    )
    assert [r["run"] for r in signals["students"]] == runs
    assert signals["students"][0]["final_pi_distill"] is not None
    assert "student DeiT (2 heads), deit_token_fixed" in capsys.readouterr().out


def test_every_saved_demo_student_carries_its_processor_and_the_command_line_continues_from_it(tmp_path):
    from hf_dtokd.cli.classify import main as classify
    from hf_dtokd.models.classification import load_image_processor

    run_demo(
        DemoArguments(
            output_dir=str(tmp_path),
            runs=["no_kd", "dto"],
            max_steps=2,
            teacher_steps=2,
            batch_size=16,
            seeds=1,
        )
    )
    for run in ("no_kd", "dto"):
        assert load_image_processor(str(tmp_path / f"{run}_seed0" / "student")) is not None, run
    metrics = classify(
        [
            "--model_name_or_path",
            str(tmp_path / "dto_seed0" / "student"),
            "--teacher_model_name_or_path",
            str(tmp_path / "teacher"),
            "--output_dir",
            str(tmp_path / "continued"),
            "--do_train",
            "--do_eval",
            "--max_steps",
            "1",
            "--per_device_train_batch_size",
            "16",
            "--use_cpu",
            "--disable_tqdm",
            "true",
            "--report_to",
            "none",
        ]
    )
    assert 0.0 <= metrics["eval_top1"] <= 1.0


def test_example_script_trains_evaluates_and_writes_a_model_card(tmp_path):
    import train_classification

    student_dir, teacher_dir = tmp_path / "student", tmp_path / "teacher"
    tiny_vit(num_labels=10).save_pretrained(student_dir)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(student_dir)
    tiny_resnet(num_labels=10).save_pretrained(teacher_dir)
    ViTImageProcessor(
        size={"height": 24, "width": 24}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(teacher_dir)
    output_dir = tmp_path / "out"
    metrics = train_classification.main(
        [
            "--model_name_or_path",
            str(student_dir),
            "--teacher_model_name_or_path",
            str(teacher_dir),
            "--output_dir",
            str(output_dir),
            "--do_train",
            "--do_eval",
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "16",
            "--use_cpu",
            "--method",
            "dto",
            "--disable_tqdm",
            "true",
        ]
    )
    assert 0.0 <= metrics["eval_top1"] <= 1.0 and "eval_top5" in metrics
    card = (output_dir / "README.md").read_text()
    assert "knowledge-distillation" in card and "dto-kd" in card
    reloaded = AutoModelForImageClassification.from_pretrained(output_dir)
    assert reloaded.config.id2label[3] == "3"
