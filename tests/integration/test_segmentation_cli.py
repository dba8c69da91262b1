"""The segmentation example script (hf-dtokd-segment) end to end on generated masks, and the SegFormer ADE20K
recipe for 2 steps with tiny stand-ins (models saved to folders, the dataset a local one of the same columns)."""

import json
import subprocess
from pathlib import Path

import yaml
from datasets import DatasetDict
from transformers import AutoModelForSemanticSegmentation

import hf_dtokd.cli.segment as segment
from hf_dtokd.cli import main as hf_dtokd_main
from hf_dtokd.data import generate_shape_masks
from testing_utils import console_script, flat_params, segformer_processor, tiny_segformer

RECIPES = Path(__file__).resolve().parents[2] / "examples" / "recipes"


def test_segment_help_lists_model_data_and_method_flags():
    completed = subprocess.run(
        [console_script("hf-dtokd-segment"), "--help"], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    for flag in (
        "--model_name_or_path",
        "--dataset_name",
        "--label_column_name",
        "--do_reduce_labels",
        "--segmentation_kd",
        "--group_distillation",
        "--teacher_model_name_or_path",
        "--method",
        "--push_to_hub",
    ):
        assert flag in completed.stdout, flag


def test_the_script_trains_evaluates_saves_a_reloadable_student_and_writes_a_card(tmp_path, monkeypatch):
    for name, seed, width in (("student", 0, 8), ("teacher", 1, 16)):
        tiny_segformer(seed, width=width).save_pretrained(tmp_path / name)
        segformer_processor(32).save_pretrained(tmp_path / name)
    settings = {
        "model_name_or_path": str(tmp_path / "student"),
        "teacher_model_name_or_path": str(tmp_path / "teacher"),
        "image_size": 32,
        "output_dir": str(tmp_path / "out"),
        "do_train": True,
        "do_eval": True,
        "max_steps": 2,
        "max_train_samples": 16,
        "max_eval_samples": 8,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "use_cpu": True,
        "method": "dto",
        "logging_steps": 1,
        "disable_tqdm": True,
        "remove_unused_columns": False,
        "report_to": "none",
    }
    (tmp_path / "run.json").write_text(json.dumps(settings))
    monkeypatch.chdir(tmp_path)
    hf_dtokd_main(["segment", "run.json"])
    out = tmp_path / "out"
    metrics = json.loads((out / "eval_results.json").read_text())
    assert {"eval_mean_iou", "eval_overall_accuracy", "eval_iou_circle", "eval_iou_background"} <= set(
        metrics
    )
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(out)
    assert type(reloaded).__name__ == "SegformerForSemanticSegmentation"
    assert reloaded.config.id2label == {0: "background", 1: "circle", 2: "square", 3: "triangle"}
    card = (out / "README.md").read_text()
    assert "trade-off method: `dto`" in card and "SegmentationKDTrainer" in card and "pixel_kd" in card
    front = yaml.safe_load(card.split("---")[1])
    results = front["model-index"][0]["results"][0]
    assert results["task"]["type"] == "image-segmentation"
    assert {m["type"] for m in results["metrics"]} >= {"mean_iou", "overall_accuracy"}
    miou = next(m["value"] for m in results["metrics"] if m["type"] == "mean_iou")
    assert miou == metrics["eval_mean_iou"]
    assert flat_params(reloaded).isfinite().all()


def test_segformer_ade20k_recipe_runs_two_steps_with_stand_ins(tmp_path, monkeypatch):
    settings = json.loads((RECIPES / "segformer_ade20k.json").read_text())
    assert settings["model_name_or_path"] == "nvidia/mit-b0" and settings["max_steps"] == 160000
    # the teacher predicts ADE20K's classes: the stand-in teacher's 4 classes play them (no id2label.json offline)
    for name, seed, width in (("student", 0, 8), ("teacher", 1, 16)):
        tiny_segformer(seed, width=width).save_pretrained(tmp_path / name)
        segformer_processor(32).save_pretrained(tmp_path / name)
    masks = generate_shape_masks(12, image_size=32, max_objects=2, seed=0)
    # ADE20K's 0 is "other" (reduced away): the stand-in masks are shifted up by one to match
    masks = masks.map(
        lambda row: {"annotation": row["annotation"].point(lambda v: v if v == 255 else min(v + 1, 4))}
    )
    monkeypatch.setattr(
        segment,
        "load_dataset",
        lambda name: DatasetDict(
            {settings["train_split"]: masks, settings["eval_split"]: masks.select(range(6))}
        ),
    )
    run = {
        **settings,
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 6,
        "dataloader_num_workers": 0,
        "use_cpu": True,
        "report_to": "none",
        "logging_steps": 1,
        "disable_tqdm": True,
        "model_name_or_path": str(tmp_path / "student"),
        "teacher_model_name_or_path": str(tmp_path / "teacher"),
        "output_dir": str(tmp_path / "out"),
        "image_size": 32,
        "bf16": False,
    }
    (tmp_path / "run.json").write_text(json.dumps(run))
    metrics = segment.main([str(tmp_path / "run.json")])
    assert "eval_mean_iou" in metrics
    history = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    assert [row["step"] for row in history if "pi_distill" in row] == [1, 2]
    assert all("channel_kd_loss" in row for row in history if "pi_distill" in row)


def test_the_segmentation_demo_runs_end_to_end_with_a_tiny_budget_and_resumes(tmp_path, capsys):
    import dataclasses

    import pytest

    from hf_dtokd.demos.segmentation import SegmentationDemoArguments, run_demo

    with pytest.raises(ValueError, match="must include the students'"):
        SegmentationDemoArguments(train_size=100, teacher_train_size=50)
    with pytest.raises(ValueError, match="unknown runs"):
        SegmentationDemoArguments(runs=["nope"])
    demo = SegmentationDemoArguments(
        output_dir=str(tmp_path),
        train_size=16,
        teacher_train_size=24,
        validation_size=8,
        image_size=32,
        teacher_steps=2,
        max_steps=3,
        batch_size=4,
        logging_steps=1,
        seeds=2,
        workers=2,  # two spawned processes, as the default
    )
    summary = run_demo(demo)
    out = capsys.readouterr().out
    assert "| teacher SegFormer" in out and "width 16, 16 images), dto" in out and "steps at a vertex" in out
    assert [(r["run"], r["seed"]) for r in summary["students"]] == [
        (run, seed) for seed in (0, 1) for run in ("no_kd", "fixed", "dto")
    ]
    no_kd, fixed, dto = summary["rows"]
    values = {(r["run"], r["seed"]): r["miou"] for r in summary["students"]}
    assert dto["diff_to_fixed"] == pytest.approx(
        ((values["dto", 0] - values["fixed", 0]) + (values["dto", 1] - values["fixed", 1])) / 2
    )
    weights = [
        w
        for r in summary["students"]
        if r["run"] == "dto"
        for w in r["step_trace"]["weight_distill"]["value"]
    ]
    assert len(weights) == 6 and dto["vertex_share"] == pytest.approx(
        sum(w <= 1e-3 or w >= 1 - 1e-3 for w in weights[:3]) / 6
        + sum(w <= 1e-3 or w >= 1 - 1e-3 for w in weights[3:]) / 6
    )
    assert no_kd["median_weight_distill"] == 0.0 and fixed["median_weight_distill"] == pytest.approx(0.5)
    assert (tmp_path / "results.json").is_file() and (tmp_path / "tradeoff.png").is_file()
    # a second run reuses the teacher and the finished runs (one process), and trains only the new one
    again = run_demo(dataclasses.replace(demo, runs=["no_kd", "fixed_0.9"], seeds=1, workers=1))
    assert again["teacher"]["cached"] and again["teacher"]["miou"] == summary["teacher"]["miou"]
    assert again["students"][0]["miou"] == values["no_kd", 0]
    # each run file names the teacher weights it was trained against (a retrained teacher's runs are not reused)
    import json

    from hf_dtokd.demos.paired_seeds import weights_fingerprint

    recorded = json.loads((tmp_path / "runs" / "fixed_seed0.json").read_text())["settings"]
    assert recorded["teacher_weights"] == weights_fingerprint(tmp_path / "teacher")
