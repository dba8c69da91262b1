"""The installed commands: --help reads well, a JSON file works as the only argument, bad commands are named."""

import json
import subprocess
import sys

import pytest
from transformers import ViTImageProcessor

from hf_dtokd.cli import main as hf_dtokd_main
from testing_utils import console_script, tiny_resnet, tiny_vit


def run(name, *flags):
    return subprocess.run([console_script(name), *flags], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", [["hf-dtokd-classify", "--help"], ["hf-dtokd", "classify", "--help"]])
def test_classify_help_lists_model_data_and_method_flags(command):
    completed = run(*command)
    assert completed.returncode == 0, completed.stderr[-2000:]
    out = completed.stdout
    assert out.startswith("usage: hf-dtokd-classify")
    for flag in (
        "--model_name_or_path",
        "--dataset_name",
        "--teacher_model_name_or_path",
        "--method",
        "--alpha",
        "--temperature",
        "--log_gradients",
        "--on_nonfinite_loss",
        "--push_to_hub",
        "--learning_rate",
    ):
        assert flag in out, flag
    assert "Distil an image classifier" in out and "{dto,dto_amortized,fixed,famo," in out


def test_demo_help_and_the_umbrella_command():
    assert run("hf-dtokd-demo", "--help").returncode == 0
    listing = run("hf-dtokd")
    assert listing.returncode == 2 and "classify" in listing.stdout and "demo" in listing.stdout
    assert "segment-demo" in listing.stdout and "distil a semantic-segmentation model" in listing.stdout
    unknown = run("hf-dtokd", "distill")
    valid = "classify, detect, segment, demo, detect-demo, segment-demo"
    assert unknown.returncode != 0 and f"unknown command 'distill'; valid commands: {valid}" in unknown.stderr


def test_a_json_file_is_the_single_argument(tmp_path, monkeypatch):
    student_dir, teacher_dir = tmp_path / "student", tmp_path / "teacher"
    tiny_vit(num_labels=10).save_pretrained(student_dir)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(student_dir)
    tiny_resnet(num_labels=10).save_pretrained(teacher_dir)
    settings = {
        "model_name_or_path": str(student_dir),
        "teacher_model_name_or_path": str(teacher_dir),
        "output_dir": str(tmp_path / "out"),
        "do_train": True,
        "max_steps": 2,
        "per_device_train_batch_size": 8,
        "use_cpu": True,
        "method": "upgrad",
        "log_gradients": True,
        "logging_steps": 1,
        "disable_tqdm": True,
        "teacher_cache": True,  # the script's datasets are preprocessed with map: cacheable
    }
    (tmp_path / "run.json").write_text(json.dumps(settings))
    monkeypatch.chdir(tmp_path)
    hf_dtokd_main(["classify", "run.json"])
    card = (tmp_path / "out" / "README.md").read_text()
    assert "trade-off method: `upgrad`" in card and "`log_gradients=True`" in card
    assert (tmp_path / "out" / "tradeoff.png").is_file()


def test_a_bad_flag_value_is_refused_with_the_valid_choices(tmp_path):
    completed = run(
        sys.executable,
        "-m",
        "hf_dtokd.cli",
        "classify",
        "--model_name_or_path",
        "x",
        "--output_dir",
        str(tmp_path),
        "--method",
        "magic",
    )
    assert completed.returncode != 0 and "invalid choice: 'magic'" in completed.stderr


@pytest.mark.parametrize(
    ("signal", "extra", "objective"),
    [
        ("features", {"projector": "vkd", "student_stages": [0], "teacher_stages": [1]}, "feature_loss"),
        (
            "features",
            {"projector": "mokd", "student_stages": [0], "teacher_stages": [1], "group_features": False},
            "pi_feature",
        ),
        ("deit_token", {"deit_distillation": "soft"}, "pi_distill"),
    ],
)
def test_the_script_runs_the_feature_and_token_trainers(tmp_path, monkeypatch, signal, extra, objective):
    from hf_dtokd.cli.classify import ClassifyConfig, ModelArguments, build_trainer, check_signal_flags
    from testing_utils import two_head_deit

    student_dir, teacher_dir = tmp_path / "student", tmp_path / "teacher"
    student = two_head_deit() if signal == "deit_token" else tiny_vit()
    student.config.num_labels, student.config.id2label = 10, {i: str(i) for i in range(10)}
    student = type(student)(student.config)
    student.save_pretrained(student_dir)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(student_dir)
    tiny_resnet(num_labels=10).save_pretrained(teacher_dir)
    settings = {
        "model_name_or_path": str(student_dir),
        "teacher_model_name_or_path": str(teacher_dir),
        "signal": signal,
        **extra,
        "output_dir": str(tmp_path / "out"),
        "do_train": True,
        "max_steps": 2,
        "use_cpu": True,
        "per_device_train_batch_size": 8,
        "method": "dto",
        "logging_steps": 1,
        "disable_tqdm": True,
        "report_to": "none",
    }
    (tmp_path / "run.json").write_text(json.dumps(settings))
    monkeypatch.chdir(tmp_path)
    hf_dtokd_main(["classify", "run.json"])
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert any(objective in row for row in state["log_history"])
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["architectures"] == [type(student).__name__]  # the student alone, no projector keys
    with pytest.raises(ValueError, match="apply to --signal features"):
        check_signal_flags("logits", ClassifyConfig(output_dir=str(tmp_path / "c"), projector="vkd"))
    with pytest.raises(ValueError, match="--no_group_features apply to --signal features"):
        check_signal_flags("logits", ClassifyConfig(output_dir=str(tmp_path / "c"), group_features=False))
    with pytest.raises(ValueError, match="valid values: logits, features, deit_token"):
        ModelArguments(model_name_or_path="x", signal="tokens")
    assert callable(build_trainer)


def image_folders(root, per_class=6):
    """``root/train/<class>/*.png`` and ``root/validation/<class>/*.png`` from the embedded digits."""
    from hf_dtokd.data import load_digits_splits

    digits = load_digits_splits()
    for split, source in (("train", "train"), ("validation", "test")):
        counts = {}
        for row in digits[source]:
            label = str(row["label"])
            if counts.get(label, 0) < per_class:
                folder = root / split / label
                folder.mkdir(parents=True, exist_ok=True)
                row["image"].save(folder / f"{counts.get(label, 0)}.png")
                counts[label] = counts.get(label, 0) + 1
    return root / "train", root / "validation"


def saved_pair(tmp_path):
    student_dir, teacher_dir = tmp_path / "student", tmp_path / "teacher"
    tiny_vit(num_labels=10).save_pretrained(student_dir)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(student_dir)
    tiny_resnet(num_labels=10).save_pretrained(teacher_dir)
    return [
        "--model_name_or_path",
        str(student_dir),
        "--teacher_model_name_or_path",
        str(teacher_dir),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "8",
        "--use_cpu",
        "--disable_tqdm",
        "true",
        "--report_to",
        "none",
        "--do_train",
        "--do_eval",
    ]


def test_upstream_data_flags_train_and_validation_folders_and_the_card_index(tmp_path):
    """transformers' run_image_classification.py flags: --train_dir / --validation_dir, evaluation on the
    validation folder, and the evaluation in the card's model-index (read back by huggingface_hub)."""
    from huggingface_hub import ModelCard

    from hf_dtokd.cli.classify import main as classify

    train_dir, validation_dir = image_folders(tmp_path / "folders")
    out = tmp_path / "out"
    metrics = classify(
        [
            *saved_pair(tmp_path),
            "--train_dir",
            str(train_dir),
            "--validation_dir",
            str(validation_dir),
            "--output_dir",
            str(out),
        ]
    )
    results = ModelCard.load(out / "README.md").data.eval_results
    by_type = {result.metric_type: result for result in results}
    assert by_type["top1"].metric_value == pytest.approx(metrics["eval_top1"])
    assert (
        by_type["top1"].task_type == "image-classification" and by_type["top1"].dataset_name == "imagefolder"
    )


def test_a_missing_validation_split_is_carved_from_training(tmp_path):
    from hf_dtokd.cli.classify import DataArguments, load_splits

    train_dir, _ = image_folders(tmp_path / "folders", per_class=8)
    splits = load_splits(DataArguments(train_dir=str(train_dir), train_val_split=0.25), seed=0)
    assert len(splits["validation"]) == 20 and len(splits["train"]) == 60
    assert sorted(set(splits["validation"]["label"])) == list(range(10))  # stratified
    with pytest.raises(ValueError, match="--train_val_split to carve one"):
        load_splits(DataArguments(train_dir=str(train_dir), train_val_split=0.0))
    with pytest.raises(ValueError, match="either --dataset_name or --train_dir"):
        DataArguments(dataset_name="beans", train_dir=str(train_dir))


MY_METRIC = """
import datasets
import evaluate


class {name}(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="{name}", citation="", inputs_description="",
            features=datasets.Features({{"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}}),
        )

    def _compute(self, predictions, references):
        hits = [int(p == r) for p, r in zip(predictions, references)]
        return {{"{key}": {formula}}}
"""


def test_metric_takes_local_evaluate_modules_combined_offline(tmp_path):
    from hf_dtokd.cli.classify import main as classify

    modules = []
    for name, key, formula in (("Hits", "hits", "sum(hits)"), ("Misses", "misses", "len(hits) - sum(hits)")):
        folder = tmp_path / key
        folder.mkdir()
        (folder / f"{key}.py").write_text(MY_METRIC.format(name=name, key=key, formula=formula))
        modules.append(str(folder / f"{key}.py"))
    out = tmp_path / "out"
    metrics = classify(
        [*saved_pair(tmp_path), "--max_eval_samples", "50", "--output_dir", str(out), "--metric", *modules]
    )
    assert metrics["eval_hits"] + metrics["eval_misses"] == 50 and "eval_top1" not in metrics
    with pytest.raises(ValueError, match="could not load the evaluate metric"):
        classify([*saved_pair(tmp_path), "--output_dir", str(out), "--metric", str(tmp_path / "nowhere.py")])


def nan_pixel_run(tmp_path, **overrides):
    """A command-line run as a new user would write it, with an image processor of std 0: NaN pixels."""
    student_dir, teacher_dir = tmp_path / "student", tmp_path / "teacher"
    tiny_vit(num_labels=10).save_pretrained(student_dir)
    ViTImageProcessor(size={"height": 16, "width": 16}, image_std=[0.0] * 3).save_pretrained(student_dir)
    tiny_resnet(num_labels=10).save_pretrained(teacher_dir)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(teacher_dir)
    settings = {
        "model_name_or_path": str(student_dir),
        "teacher_model_name_or_path": str(teacher_dir),
        "output_dir": str(tmp_path / "out"),
        "do_train": True,
        "do_eval": True,
        "max_steps": 3,
        "per_device_train_batch_size": 8,
        "use_cpu": True,
        "logging_steps": 1,
        "disable_tqdm": True,
        **overrides,
    }
    (tmp_path / "run.json").write_text(json.dumps(settings))
    return tmp_path / "out"


def test_a_nan_run_stopped_exits_non_zero_and_leaves_no_finished_model(tmp_path, monkeypatch):
    out = nan_pixel_run(tmp_path, on_nonfinite_loss="stop")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        SystemExit, match=r"training stopped: non-finite losses at optimizer step 1"
    ) as stopped:
        hf_dtokd_main(["classify", "run.json"])
    assert stopped.value.code not in (0, None)
    left = set(out.iterdir()) if out.exists() else set()
    for finished in ("model.safetensors", "README.md", "eval_results.json", "train_results.json"):
        assert out / finished not in left


def test_a_nan_run_continued_scores_zero_says_so_and_is_not_pushed(tmp_path, monkeypatch, hub):
    nan_pixel_run(tmp_path, push_to_hub=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="refusing to push the student to the Hub"):
        hf_dtokd_main(["classify", "run.json"])
    assert hub.uploads == []  # refused before any upload (the Trainer's push at save_model included)


def test_a_nan_run_continued_without_push_is_scored_zero_and_carded_with_a_warning(tmp_path, monkeypatch):
    from hf_dtokd.cli.classify import main as classify

    out = nan_pixel_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    metrics = classify(["run.json"])
    assert metrics["nonfinite_losses"] == 3 and metrics["nonfinite_weights"] > 0
    assert metrics["eval_top1"] == 0.0  # NaN logits are never a hit (was 1.0)
    card = (out / "README.md").read_text()
    assert "**Warning:** 3 optimizer step(s) of this run had non-finite (NaN/inf) losses" in card
    assert "value: 1.0" not in card
