"""The embedded default: a real distillation on scikit-learn's digits, offline, in minutes on 2 CPU cores.

1. A CNN teacher (a small transformers ResNet, at 24x24 pixels, mean/std 0.5) is trained with the
   plain Trainer and cached in ``<output_dir>/teacher`` (config, weights, image processor).
2. A ViT student (4 layers, width 64, at 32x32 pixels, ImageNet mean/std) is trained from the same
   initialisation, data order and budget by: no KD, fixed-alpha KD, exact DTO-KD and amortized
   DTO-KD; opt-in runs (``--runs``, ``SIGNAL_RUNS``) add feature KD through each projector and DeiT's
   distillation token (a two-head DeiT of the same shape), each with fixed alpha and exact DTO-KD. The
   teacher is loaded from its folder by path (the same code path as a Hub id) and
   gets the student's pixels converted to its own resolution and normalisation.
3. It prints a table (top-1 of teacher and students on the 360 test images, wall time, final pi),
   and writes ``results.json`` and ``tradeoff.png`` (pi and gradient conflict over steps).

Run: ``python -m hf_dtokd.demo`` (or ``hf-dtokd-demo``); ``--help`` lists the flags.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    DefaultDataCollator,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    HfArgumentParser,
    ResNetConfig,
    ResNetForImageClassification,
    Trainer,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)
from transformers.utils import logging as hf_logging

from .config import DTOKDConfig
from .data import load_digits_splits, preprocess_images
from .deit_token import DeiTTokenTrainer
from .feature_kd import FeatureKDTrainer
from .metrics import classification_metrics
from .plotting import plot_tradeoff
from .trainer import DTOKDTrainer

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
RUNS = ("no_kd", "fixed", "dto", "dto_amortized")
#: Opt-in runs with other signals (``--runs``): feature KD through each projector (grouped into DTO-KD's two
#: objectives) and DeiT's distillation token (a two-head DeiT student of the ViT's shape), each with exact
#: DTO-KD and with fixed alpha.
SIGNAL_RUNS = tuple(
    f"{signal}_{method}" for signal in ("feature_linear", "feature_vkd", "feature_mokd", "deit_token")
    for method in ("fixed", "dto")
)  # fmt: skip


@dataclass
class DemoArguments:
    output_dir: str = field(
        default="outputs/digits", metadata={"help": "Where the teacher, results and plot go."}
    )
    runs: list[str] = field(
        default_factory=lambda: list(RUNS),
        metadata={"help": f"Student runs among {RUNS + SIGNAL_RUNS} (default: {RUNS})."},
    )
    max_steps: int = field(default=800, metadata={"help": "Optimizer steps of every student run."})
    teacher_steps: int = field(
        default=300, metadata={"help": "Optimizer steps of the teacher (trained once, cached)."}
    )
    batch_size: int = field(default=64, metadata={"help": "Per-step batch size (students and teacher)."})
    learning_rate: float = field(default=2e-3, metadata={"help": "AdamW learning rate of the students."})
    temperature: float = field(default=4.0, metadata={"help": "Distillation temperature."})
    alpha: float = field(default=0.5, metadata={"help": "Distillation weight of the fixed-alpha run."})
    seed: int = field(default=0, metadata={"help": "Seed of the student initialisation and the data order."})
    logging_steps: int = field(default=10, metadata={"help": "Log (and plot) every this many steps."})
    retrain_teacher: bool = field(
        default=False, metadata={"help": "Train the teacher even when one is cached."}
    )

    def __post_init__(self) -> None:
        unknown = [r for r in self.runs if r not in RUNS + SIGNAL_RUNS]
        if unknown:
            raise ValueError(f"unknown runs {unknown}; valid values: {', '.join(RUNS + SIGNAL_RUNS)}")
        if self.max_steps < 1 or self.teacher_steps < 1:
            raise ValueError("max_steps and teacher_steps must be >= 1")


def student_processor() -> ViTImageProcessor:
    return ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    )


def teacher_processor() -> ViTImageProcessor:
    return ViTImageProcessor(size={"height": 24, "width": 24}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def build_student(seed: int, labels: list[str], two_head: bool = False) -> ViTForImageClassification:
    """The ViT student; ``two_head``: a DeiT of the same shape with a distillation token and head."""
    torch.manual_seed(seed)
    config = (DeiTConfig if two_head else ViTConfig)(
        image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
    )  # fmt: skip
    return DeiTForImageClassificationWithTeacher(config) if two_head else ViTForImageClassification(config)


def build_teacher(labels: list[str]) -> ResNetForImageClassification:
    torch.manual_seed(1234)
    config = ResNetConfig(
        embedding_size=32, hidden_sizes=[32, 64, 128], depths=[1, 1, 1], layer_type="basic",
        downsample_in_first_stage=False,
        num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
    )  # fmt: skip
    return ResNetForImageClassification(config)


def common_args(output_dir: Path, demo: DemoArguments, **overrides: Any) -> dict[str, Any]:
    args = dict(
        output_dir=str(output_dir), use_cpu=True, per_device_train_batch_size=demo.batch_size,
        per_device_eval_batch_size=256, max_steps=demo.max_steps, learning_rate=demo.learning_rate,
        warmup_steps=int(0.05 * demo.max_steps), lr_scheduler_type="cosine", weight_decay=0.05,
        logging_steps=demo.logging_steps, save_strategy="no", report_to="none", disable_tqdm=True,
        seed=demo.seed, data_seed=demo.seed, dataloader_num_workers=0,
    )  # fmt: skip
    args.update(overrides)
    return args


def train_teacher(demo: DemoArguments, splits: dict[str, Any], labels: list[str]) -> dict[str, float]:
    """Train and save the teacher unless a cached one exists; return its test metrics."""
    folder = Path(demo.output_dir) / "teacher"
    metrics_file = folder / "teacher_metrics.json"
    if metrics_file.is_file() and not demo.retrain_teacher:
        return json.loads(metrics_file.read_text())
    processor = teacher_processor()
    train = preprocess_images(splits["train"], processor)
    test = preprocess_images(splits["test"], processor)
    args = TrainingArguments(
        **common_args(folder / "run", demo, max_steps=demo.teacher_steps, learning_rate=3e-3)
    )
    trainer = Trainer(
        model=build_teacher(labels), args=args, train_dataset=train, eval_dataset=test,
        data_collator=DefaultDataCollator(), compute_metrics=classification_metrics,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.train()
    metrics = {"top1": trainer.evaluate()["eval_top1"], "wall_seconds": time.perf_counter() - start}
    trainer.model.save_pretrained(folder)
    processor.save_pretrained(folder)
    metrics_file.write_text(json.dumps(metrics, indent=2))
    return metrics


def train_student(run: str, demo: DemoArguments, splits: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    processor = student_processor()
    train = preprocess_images(splits["train"], processor)
    test = preprocess_images(splits["test"], processor)
    output_dir = Path(demo.output_dir) / run
    signal, method = run.rsplit("_", 1) if run in SIGNAL_RUNS else ("logits", run)
    student = build_student(demo.seed, labels, two_head=signal == "deit_token")
    start = time.perf_counter()
    if run == "no_kd":
        trainer: Trainer = Trainer(
            model=student, args=TrainingArguments(**common_args(output_dir, demo)), train_dataset=train,
            eval_dataset=test, data_collator=DefaultDataCollator(), compute_metrics=classification_metrics,
        )  # fmt: skip
    else:
        config = DTOKDConfig(
            **common_args(output_dir, demo), method=method, alpha=demo.alpha, temperature=demo.temperature,
            teacher_model_name_or_path=str(Path(demo.output_dir) / "teacher"),
        )  # fmt: skip
        kwargs = dict(
            model=student, args=config, train_dataset=train, eval_dataset=test,
            data_collator=DefaultDataCollator(), processing_class=processor,
        )  # fmt: skip
        if signal.startswith("feature_"):
            trainer = FeatureKDTrainer(projector=signal.split("_", 1)[1], group_features=True, **kwargs)
        elif signal == "deit_token":
            trainer = DeiTTokenTrainer(distillation="hard", **kwargs)
        else:
            trainer = DTOKDTrainer(**kwargs)
    trainer.train()
    wall = time.perf_counter() - start
    metrics = trainer.evaluate()
    history = trainer.state.log_history
    pis = [row["pi_distill"] for row in history if "pi_distill" in row]
    cosines = [row["grad_cos"] for row in history if "grad_cos" in row]
    trainer.save_model(str(output_dir / "student"))
    return {
        "run": run,
        "top1": metrics["eval_top1"],
        "top5": metrics.get("eval_top5"),
        "wall_seconds": wall,
        "seconds_per_step": wall / demo.max_steps,
        "final_pi_distill": pis[-1] if pis else None,
        "mean_pi_distill": sum(pis) / len(pis) if pis else None,
        "share_steps_conflicting": sum(c < 0 for c in cosines) / len(cosines) if cosines else None,
        "log_history": history,
    }


def format_table(teacher: dict[str, float], results: list[dict[str, Any]]) -> str:
    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = [
        "| model | top-1 (360 test images) | wall time (s) | final pi_distill | mean pi_distill | steps with conflict |",
        "|---|---|---|---|---|---|",
        f"| teacher (ResNet, 24 px) | {100 * teacher['top1']:.1f} | {teacher['wall_seconds']:.0f} | - | - | - |",
    ]
    for r in results:
        lines.append(
            f"| student {'DeiT (2 heads)' if r['run'].startswith('deit') else 'ViT'}, {r['run']} | {100 * r['top1']:.1f} | {r['wall_seconds']:.0f} | "
            f"{fmt(r['final_pi_distill'], '.3f')} | {fmt(r['mean_pi_distill'], '.3f')} | "
            f"{fmt(None if r['share_steps_conflicting'] is None else 100 * r['share_steps_conflicting'], '.0f')}"
            f"{'' if r['share_steps_conflicting'] is None else ' %'} |"
        )
    return "\n".join(lines)


def write_summary(
    output_dir: Path,
    arguments: dict[str, Any],
    teacher: dict[str, Any],
    results: list[dict[str, Any]],
    table: str,
    plot: Any,
    start: float,
) -> dict[str, Any]:
    """Write a demo's ``results.json`` and ``results.md`` (the table), print the table; return the summary."""
    summary = {
        "arguments": arguments,
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads()},
        "teacher": teacher,
        "students": results,
        "total_wall_seconds": time.perf_counter() - start,
        "table": table,
    }
    (output_dir / "results.json").write_text(json.dumps(summary, indent=2))
    (output_dir / "results.md").write_text(table + "\n")
    print(table)
    print(f"\nwrote {output_dir / 'results.json'}, {output_dir / 'results.md'} and {plot} "
          f"({summary['total_wall_seconds']:.0f} s in all)")  # fmt: skip
    return summary


def run_demo(demo: DemoArguments) -> dict[str, Any]:
    output_dir = Path(demo.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    splits = load_digits_splits(seed=0)
    labels = splits["train"].features["label"].names
    start = time.perf_counter()
    teacher = train_teacher(demo, splits, labels)
    results = [train_student(run, demo, splits, labels) for run in demo.runs]
    table = format_table(teacher, results)
    histories = {r["run"]: r["log_history"] for r in results if r["run"] != "no_kd"}
    logged = any("pi_distill" in row for history in histories.values() for row in history)
    plot = plot_tradeoff(histories, output_dir / "tradeoff.png") if logged else "no plot (nothing logged)"
    return write_summary(output_dir, asdict(demo), teacher, results, table, plot, start)


def main(argv: list[str] | None = None) -> None:
    (demo,) = HfArgumentParser((DemoArguments,)).parse_args_into_dataclasses(args=argv)
    hf_logging.set_verbosity_warning()
    logging.basicConfig(level=logging.WARNING)
    run_demo(demo)


if __name__ == "__main__":
    main()


__all__ = ["DemoArguments", "main", "run_demo", "train_student", "train_teacher"]
