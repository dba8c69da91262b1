"""The detection example script (hf-dtokd-detect) and the detection demo, end to end on tiny budgets."""

import dataclasses
import json
import logging
import os
import subprocess

import pytest
from transformers import ResNetConfig, ResNetForImageClassification

from hf_dtokd.cli import main as hf_dtokd_main
from hf_dtokd.cli.detect import DetectionModelArguments
from hf_dtokd.demos.paired_seeds import cpu_name
from hf_dtokd.demos.shapes import DetectionDemoArguments, load_splits, run_demo, weights_fingerprint
from hf_dtokd.tasks.detection.models import detection_processor
from testing_utils import console_script, tiny_detr


def test_detect_help_lists_model_data_and_method_flags():
    completed = subprocess.run(
        [console_script("hf-dtokd-detect"), "--help"], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    for flag in (
        "--model_name_or_path",
        "--student_head",
        "--student_backbone",
        "--dataset_name",
        "--box_threshold",
        "--group_distillation",
        "--token_projector",
        "--teacher_model_name_or_path",
        "--method",
        "--push_to_hub",
    ):
        assert flag in completed.stdout, flag


def test_the_student_is_given_one_way():
    with pytest.raises(ValueError, match="either as --model_name_or_path"):
        DetectionModelArguments()
    with pytest.raises(ValueError, match="either as --model_name_or_path"):
        DetectionModelArguments(model_name_or_path="a", student_head="detr", student_backbone="b")
    with pytest.raises(ValueError, match="either as --model_name_or_path"):
        DetectionModelArguments(student_head="detr")


@pytest.mark.parametrize("assembled", [False, True])
def test_the_script_trains_evaluates_and_writes_a_card(tmp_path, monkeypatch, assembled):
    teacher = tmp_path / "teacher"
    tiny_detr(1).save_pretrained(teacher)
    if assembled:
        backbone = tmp_path / "backbone"
        ResNetForImageClassification(
            ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 16, 16])
        ).save_pretrained(backbone)
        student = {"student_head": "detr", "student_backbone": str(backbone), "token_projector": "linear"}
    else:
        tiny_detr(0).save_pretrained(tmp_path / "student")
        detection_processor("detr", 32).save_pretrained(tmp_path / "student")
        # the validation images distilled without their labels as well
        student = {"model_name_or_path": str(tmp_path / "student"), "unlabelled_split": "validation"}
    settings = {
        **student,
        "teacher_model_name_or_path": str(teacher),
        "image_size": 32,
        "output_dir": str(tmp_path / "out"),
        "do_train": True,
        "do_eval": True,
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 50,
        "use_cpu": True,
        "method": "dto",
        "group_distillation": True,
        "logging_steps": 1,
        "disable_tqdm": True,
        "remove_unused_columns": False,
        "report_to": "none",
    }
    (tmp_path / "run.json").write_text(json.dumps(settings))
    monkeypatch.chdir(tmp_path)
    hf_dtokd_main(["detect", "run.json"])
    metrics = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert {"eval_map", "eval_map_50", "eval_map_75", "eval_map_circle"} <= set(metrics)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "object-detection" in card and "trade-off method: `dto`" in card
    assert ("`unlabelled_batch_size=4`" in card) == (not assembled)
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["id2label"] == {"0": "circle", "1": "square", "2": "triangle"}
    assert saved["architectures"] == ["DetrForObjectDetection"]  # the student alone, also with a projector


def test_the_detection_demo_runs_end_to_end_with_a_tiny_budget(tmp_path, capsys, caplog):
    defaults = DetectionDemoArguments()
    assert defaults.runs == ["no_kd", "fixed", "dto_shared"] and defaults.evaluate_on == "test"
    assert defaults.student_backbone == "pretrained"
    assert (defaults.teacher_train_size, defaults.train_size, defaults.token_projector) == (3200, 200, "none")
    assert (defaults.unlabelled_size, defaults.unlabelled_batch_size) == (3000, 16)
    with pytest.raises(ValueError, match="multiple of 32"):
        DetectionDemoArguments(image_size=48)
    with pytest.raises(ValueError, match="backbone_pretrain_images and backbone_pretrain_steps >= 1"):
        DetectionDemoArguments(backbone_pretrain_steps=0)
    assert (
        DetectionDemoArguments(student_backbone="random", backbone_pretrain_steps=0).student_backbone
        == "random"
    )
    with pytest.raises(ValueError, match="seeds and workers must be >= 1"):
        DetectionDemoArguments(workers=0)
    with pytest.raises(ValueError, match="exceed the teacher's 3200 training images"):
        DetectionDemoArguments(unlabelled_size=3001)
    demo = DetectionDemoArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        teacher_steps=2,
        train_size=16,
        teacher_train_size=24,  # the students' images and 8 more, which the KD runs see without labels
        unlabelled_size=8,
        unlabelled_batch_size=2,
        validation_size=8,
        test_size=8,
        logging_steps=1,
        batch_size=4,
        runs=["no_kd", "fixed", "dto"],
        token_projector="vkd",  # token KD in every KD run
        backbone_pretrain_images=8,
        backbone_pretrain_steps=2,
        seeds=2,
        workers=2,  # two spawned processes, as the default
    )
    with caplog.at_level(logging.WARNING, logger="hf_dtokd.demos.shapes"):
        summary = run_demo(demo)
    out = capsys.readouterr().out
    # a teacher trained for two steps is weak, and the demo says so (a cached one is not reported again)
    assert summary["teacher"]["map"] < 0.45 and "the teacher trained here scored" in caplog.text
    caplog.clear()
    # each run names the weights it was trained against (the teacher's fingerprint is the summary's) and its CPU
    assert summary["teacher"]["weights"] == weights_fingerprint(tmp_path / "teacher")
    assert all(r["cpu"] == cpu_name() for r in summary["students"])
    assert "| teacher RT-DETR" in out and "student RT-DETR (d_model 32, 8 queries), dto" in out
    assert [(r["run"], r["seed"]) for r in summary["students"]] == [
        (run, seed) for seed in (0, 1) for run in ("no_kd", "fixed", "dto")
    ]
    assert all(r["threads"] == max(1, len(os.sched_getaffinity(0)) // 2) for r in summary["students"])
    assert [r["unlabelled_images"] for r in summary["students"]] == [0, 8, 8] * 2
    no_kd, fixed, dto = summary["rows"]
    assert "steps in conflict (all / last quarter)" in out and "vs fixed (paired)" in out
    # the row pools the two seeds' per-step traces: recomputed here from the runs' own traces
    cosines = [
        c for r in summary["students"] if r["run"] == "dto" for c in r["step_trace"]["grad_cos"]["value"]
    ]
    assert len(cosines) == 4 and dto["conflict_rate"] == pytest.approx(sum(c < 0 for c in cosines) / 4)
    assert fixed["conflict_rate"] is None and fixed["median_weight_distill"] == pytest.approx(0.5)
    assert no_kd["median_weight_distill"] == 0.0
    # the task weight and the step-to-step change of the distillation weight, from the traces themselves
    assert no_kd["median_weight_task"] == 1.0 and fixed["median_weight_task"] == pytest.approx(0.5)
    assert fixed["median_weight_change"] == 0.0
    applied = [r["step_trace"]["weight_distill"]["value"] for r in summary["students"] if r["run"] == "dto"]
    changes = sorted(abs(b - a) for w in applied for a, b in zip(w, w[1:]))
    assert dto["median_weight_change"] == pytest.approx((changes[0] + changes[1]) / 2)  # 2 steps x 2 seeds
    # with token_projector every KD run adds token KD (the paper's signal); no KD has no projector
    kd_runs = [r for r in summary["students"] if r["run"] != "no_kd"]
    assert all(any("token_kd_loss" in row for row in r["log_history"]) for r in kd_runs)
    assert not any(
        "token_kd_loss" in row for r in summary["students"] if r["run"] == "no_kd" for row in r["log_history"]
    )
    maps = {(r["run"], r["seed"]): r["map"] for r in summary["students"]}
    assert fixed["diff_to_no_kd"] == pytest.approx(
        ((maps["fixed", 0] - maps["no_kd", 0]) + (maps["fixed", 1] - maps["no_kd", 1])) / 2
    )
    teacher_map = summary["teacher"]["map"]
    assert dto["share_of_teacher"] == (
        pytest.approx(dto["map_mean"] / teacher_map) if teacher_map > 0 else None
    )
    assert (tmp_path / "results.json").is_file() and (tmp_path / "tradeoff.png").is_file()
    assert (tmp_path / "teacher" / "config.json").is_file()
    assert "student backbone:" in out and (tmp_path / "student_backbone" / "config.json").is_file()
    # a second run reuses the teacher and reports the time of the run that trained it; one process
    capsys.readouterr()
    # finished runs are reused from their files (a stopped demo resumes run by run), new ones are trained
    again = run_demo(
        dataclasses.replace(demo, runs=["no_kd", "dto_shared", "dto_token_kd"], seeds=1, workers=1)
    )
    assert again["teacher"]["cached"] and again["teacher"]["map"] == summary["teacher"]["map"]
    assert "the teacher trained here scored" not in caplog.text
    assert again["teacher"]["train_seconds"] == pytest.approx(summary["teacher"]["train_seconds"])
    out = capsys.readouterr().out
    assert f"| {summary['teacher']['train_seconds']:.0f} (cached) |" in out
    assert "1 of 3 runs already finished with these settings: reused" in out
    assert again["students"][0] == summary["students"][0]  # no_kd seed 0, read back
    assert "dto_shared seed 0: mAP" in out and "no_kd seed 0: mAP" not in out
    assert "teacher: mAP" in out and "'loss'" not in out  # a line per model
    assert 0.0 <= again["students"][1]["vertex_share"] <= 1.0
    token = again["students"][2]  # the paper's signal: matched query states through a VkD projector
    assert token["run"] == "dto_token_kd" and any("token_kd_loss" in row for row in token["log_history"])
    # class and box KD only, scored on the validation images, each run kept gzipped in runs_dir (resumable)
    tested = dataclasses.replace(
        demo,
        runs=["no_kd", "fixed"],
        seeds=1,
        row_seeds=["no_kd=2"],  # a second seed of no KD alone
        workers=1,
        token_projector="none",
        evaluate_on="validation",
        runs_dir=str(tmp_path / "kept"),
    )
    splits = load_splits(tested)
    test_ids = {int(i) for i in splits["test"].with_format(None)["image_id"]}
    validation_ids = {int(i) for i in splits["validation"].with_format(None)["image_id"]}
    assert len(test_ids) == 8 and not test_ids & validation_ids
    first = run_demo(tested)
    assert not any("token_kd_loss" in row for r in first["students"] for row in r["log_history"])
    assert [(r["run"], r["seed"]) for r in first["students"]] == [("no_kd", 0), ("fixed", 0), ("no_kd", 1)]
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == [
        "fixed_seed0.json.gz",
        "no_kd_seed0.json.gz",
        "no_kd_seed1.json.gz",
    ]
    capsys.readouterr()
    assert run_demo(tested)["students"] == first["students"]
    out = capsys.readouterr().out
    assert "3 of 3 runs already finished" in out and "over each row's seeds (n)" in out
    with pytest.raises(ValueError, match="--test_size"):
        DetectionDemoArguments(test_size=0)  # the default scores the test images
    # other settings: nothing reused; a teacher on more images than the students is trained again
    larger = run_demo(dataclasses.replace(demo, runs=["no_kd"], seeds=1, workers=1, teacher_train_size=32))
    assert not larger["teacher"]["cached"]
    assert "already finished" not in capsys.readouterr().out
    # the students' learning rate and moving average are theirs: the teacher stays cached (its own rate is not)
    students_only = dataclasses.replace(
        demo, runs=["fixed"], seeds=1, workers=1, teacher_train_size=32, learning_rate=1e-3, ema_decay=0.9
    )
    assert run_demo(students_only)["teacher"]["cached"]
    assert not run_demo(dataclasses.replace(students_only, teacher_learning_rate=1e-3))["teacher"]["cached"]
