"""The embedded detection default: distilling an RT-DETR on generated shapes, offline, on 2 CPU cores.

1. Data: ``load_shapes_splits`` (coloured circles / squares / triangles on textured backgrounds, 64 px,
   1-2 objects per image, COCO boxes; 800 train and 200 validation images, fixed seed), prepared by
   the RT-DETR image processor with ``DetectionTransform``.
2. A teacher RT-DETR (ResNet backbone of widths 16-32, d_model 64, 10 queries) is trained with the plain
   ``transformers.Trainer`` on its own detection loss, evaluated with ``DetectionMetrics`` and cached in
   ``<output_dir>/teacher``.
3. A smaller student RT-DETR (d_model 48 against 64, 8 queries against 10) is trained for as many steps
   as the teacher, from the same initialisation and data order for every run, with ``DetectionKDTrainer``:
   no KD (alpha 0), fixed alpha 0.5 and exact DTO-KD, on the two objectives (class KD + box KD, the
   detection loss). The teacher is loaded from its folder by path (the same code path as a Hub id).
4. It prints a table (mAP, mAP50, mAP75 on the 200 validation images, wall time, pi, the share of steps
   whose two gradients conflict and the median weight applied to the distillation loss, both per step) and
   writes ``results.json``, ``results.md`` and ``tradeoff.png`` (with the per-step cosines and weights).

Run: ``python -m hf_dtokd.demos.shapes`` (or ``hf-dtokd detect-demo``); ``--help`` lists the flags.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import HfArgumentParser, ResNetConfig, RTDetrImageProcessor, Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

from hf_dtokd.data import SHAPE_CLASSES, load_shapes_splits
from hf_dtokd.demos.digits import write_summary
from hf_dtokd.hub.plotting import plot_tradeoff
from hf_dtokd.hub.step_trace import StepTrace
from hf_dtokd.signals.detection.inputs import DetectionTransform, collate_detection
from hf_dtokd.signals.detection.metrics import DetectionMetrics
from hf_dtokd.signals.detection.models import build_detector
from hf_dtokd.signals.detection.trainer import DetectionKDTrainer
from hf_dtokd.trainer.dtokd_config import DTOKDConfig

RUNS = ("no_kd", "fixed", "dto")
DEFAULT_RUNS = RUNS  # no KD (alpha 0), fixed alpha and DTO-KD: the ranking the demo is for
ID2LABEL = dict(enumerate(SHAPE_CLASSES))
IMAGE_SIZE = 64  # a multiple of 32: RT-DETR's strides 8 / 16 / 32 must give maps its FPN can merge


@dataclass
class DetectionDemoArguments:
    output_dir: str = field(
        default="outputs/shapes", metadata={"help": "Where the teacher, results and plot go."}
    )
    runs: list[str] = field(
        default_factory=lambda: list(DEFAULT_RUNS), metadata={"help": f"Student runs among {RUNS}."}
    )
    max_steps: int = field(default=1200, metadata={"help": "Optimizer steps of every student run."})
    teacher_steps: int = field(default=1200, metadata={"help": "Optimizer steps of the teacher (cached)."})
    batch_size: int = field(default=16, metadata={"help": "Per-step batch size (students and teacher)."})
    learning_rate: float = field(
        default=2e-3, metadata={"help": "AdamW learning rate (students and teacher)."}
    )
    temperature: float = field(default=2.0, metadata={"help": "Class-KD temperature."})
    alpha: float = field(default=0.5, metadata={"help": "Distillation weight of the fixed-alpha run."})
    train_size: int = field(default=800, metadata={"help": "Generated training images."})
    validation_size: int = field(default=200, metadata={"help": "Generated validation images."})
    seed: int = field(default=0, metadata={"help": "Seed of the student initialisation and the data order."})
    logging_steps: int = field(default=20, metadata={"help": "Log (and plot) every this many steps."})
    retrain_teacher: bool = field(
        default=False, metadata={"help": "Train the teacher even when one is cached."}
    )
    student_width: int = field(
        default=16, metadata={"help": "Student backbone width (stages: w, w, 2w, 2w)."}
    )
    student_d_model: int = field(default=48, metadata={"help": "Student transformer width (teacher: 64)."})
    image_size: int = field(
        default=IMAGE_SIZE, metadata={"help": "Side of the generated square images (px)."}
    )
    max_objects: int = field(default=2, metadata={"help": "At most this many shapes per generated image."})

    def __post_init__(self) -> None:
        unknown = [r for r in self.runs if r not in RUNS]
        if unknown:
            raise ValueError(f"unknown runs {unknown}; valid values: {', '.join(RUNS)}")
        if self.max_steps < 1 or self.teacher_steps < 1:
            raise ValueError("max_steps and teacher_steps must be >= 1")
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(
                f"image_size must be a multiple of 32 (RT-DETR's feature strides 8 / 16 / 32), got {self.image_size}"
            )
        if self.max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {self.max_objects}")


def processor(size: int = IMAGE_SIZE) -> RTDetrImageProcessor:
    return RTDetrImageProcessor(size={"height": size, "width": size})


def build_model(role: str, seed: int, width: int = 16, d_model: int = 64) -> Any:
    """The teacher (widths 16-32, d_model 64, 10 queries) or a student (given widths, 8 queries)."""
    queries = 10 if role == "teacher" else 8
    backbone = ResNetConfig(
        embedding_size=width,
        hidden_sizes=[width, width, 2 * width, 2 * width],
        depths=[1, 1, 1, 1],
        layer_type="basic",
    )
    torch.manual_seed(seed)
    return build_detector(
        "rt_detr",
        backbone,
        ID2LABEL,
        d_model=d_model,
        encoder_hidden_dim=d_model,
        num_queries=queries,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model,
        num_denoising=20,
        decoder_n_points=2,
    )


def common_args(output_dir: Path, demo: DetectionDemoArguments, steps: int) -> dict[str, Any]:
    return dict(
        output_dir=str(output_dir),
        use_cpu=True,
        per_device_train_batch_size=demo.batch_size,
        per_device_eval_batch_size=50,
        max_steps=steps,
        learning_rate=demo.learning_rate,
        warmup_steps=int(0.05 * steps),
        lr_scheduler_type="cosine",
        weight_decay=1e-4,
        max_grad_norm=1.0,
        logging_steps=demo.logging_steps,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=demo.seed,
        data_seed=demo.seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        eval_do_concat_batches=False,
    )


def train_teacher(demo: DetectionDemoArguments, splits: dict[str, Any]) -> dict[str, Any]:
    """Train (or reuse) the teacher with the plain Trainer; its mAP on the validation images."""
    folder = Path(demo.output_dir) / "teacher"
    start = time.perf_counter()
    # reused only when it was trained on the same data and budget
    settings = {
        k: getattr(demo, k)
        for k in ("image_size", "max_objects", "train_size", "teacher_steps", "batch_size", "learning_rate")
    }
    marker = folder / "demo_settings.json"
    cached = (
        (folder / "config.json").is_file()
        and marker.is_file()
        and json.loads(marker.read_text()) == settings
        and not demo.retrain_teacher
    )
    model = build_model("teacher", 1234)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**common_args(folder / "run", demo, demo.teacher_steps)),
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        data_collator=collate_detection,
        compute_metrics=DetectionMetrics(processor(demo.image_size), ID2LABEL),
    )
    if cached:
        trainer.model = type(model).from_pretrained(folder)
    else:
        trainer.train()
        trainer.model.save_pretrained(folder)
        processor(demo.image_size).save_pretrained(folder)
        marker.write_text(json.dumps(settings))
    metrics = trainer.evaluate()
    return {
        "folder": str(folder),
        "cached": cached,
        "wall_seconds": time.perf_counter() - start,
        **_maps(metrics),
    }


def _maps(metrics: dict[str, float]) -> dict[str, float]:
    return {name: metrics[f"eval_{name}"] for name in ("map", "map_50", "map_75")}


def train_student(
    run: str, demo: DetectionDemoArguments, splits: dict[str, Any], teacher: str
) -> dict[str, Any]:
    """One student run from the shared initialisation; its mAP and trade-off trace."""
    method, alpha = (
        ("fixed", 0.0) if run == "no_kd" else ("fixed", demo.alpha) if run == "fixed" else ("dto", 0.5)
    )
    config = DTOKDConfig(
        **common_args(Path(demo.output_dir) / run, demo, demo.max_steps),
        method=method,
        alpha=alpha,
        temperature=demo.temperature,
        teacher_model_name_or_path=teacher,
        plot_tradeoff=False,
    )
    start = time.perf_counter()
    trainer = DetectionKDTrainer(
        model=build_model("student", demo.seed, demo.student_width, demo.student_d_model),
        args=config,
        group_distillation=True,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        processing_class=processor(demo.image_size),
    )
    trainer.train()
    wall = time.perf_counter() - start
    metrics = trainer.evaluate()
    pis = [row["pi_distill"] for row in trainer.state.log_history if "pi_distill" in row]
    return {
        **per_step_summary(trainer.step_trace),
        "run": run,
        "method": method,
        "alpha": alpha if method == "fixed" else None,
        "wall_seconds": wall,
        **_maps(metrics),
        "final_pi_distill": pis[-1] if pis and method == "dto" else None,
        "mean_pi_distill": sum(pis) / len(pis) if pis and method == "dto" else None,
        "log_history": trainer.state.log_history,
        "step_trace": trainer.step_trace.to_dict(),
    }


def per_step_summary(trace: StepTrace) -> dict[str, float | None]:
    """From the per-step trace: the share of steps whose distillation and task gradients conflict (cosine < 0;
    over all steps and the last quarter) and the median raw-loss weight applied to the distillation loss."""
    points = trace.to_dict()
    cosines = [c for c in points.get("grad_cos", {}).get("value", []) if not math.isnan(c)]
    weights = points.get("weight_distill", {}).get("value", [])
    late = cosines[len(cosines) * 3 // 4 :]
    return {
        "conflict_rate": sum(c < 0 for c in cosines) / len(cosines) if cosines else None,
        "conflict_rate_last_quarter": sum(c < 0 for c in late) / len(late) if late else None,
        "median_weight_distill": statistics.median(weights) if weights else None,
    }


def format_table(teacher: dict[str, Any], results: list[dict[str, Any]], demo: DetectionDemoArguments) -> str:
    lines = [
        "| model | mAP | mAP50 | mAP75 | wall time (s) | final / mean pi_distill | steps in conflict (all / last "
        "quarter) | median applied weight on distill |",
        "|---|---|---|---|---|---|---|---|",
        f"| teacher RT-DETR (d_model 64, 10 queries) | {100 * teacher['map']:.1f} | {100 * teacher['map_50']:.1f} | "
        f"{100 * teacher['map_75']:.1f} | {teacher['wall_seconds']:.0f} | - | - | - |",
    ]
    for r in results:
        pi = (
            "-"
            if r["final_pi_distill"] is None
            else f"{r['final_pi_distill']:.3f} / {r['mean_pi_distill']:.3f}"
        )
        conflict = (
            "-"
            if r["conflict_rate"] is None
            else f"{100 * r['conflict_rate']:.1f} % / {100 * r['conflict_rate_last_quarter']:.1f} %"
        )
        weight = "-" if r["median_weight_distill"] is None else f"{r['median_weight_distill']:.3f}"
        lines.append(
            f"| student RT-DETR (d_model {demo.student_d_model}, 8 queries), {r['run']} | {100 * r['map']:.1f} | "
            f"{100 * r['map_50']:.1f} | {100 * r['map_75']:.1f} | {r['wall_seconds']:.0f} | {pi} | {conflict} | "
            f"{weight} |"
        )
    return "\n".join(lines)


def run_demo(demo: DetectionDemoArguments) -> dict[str, Any]:
    output_dir = Path(demo.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    raw = load_shapes_splits(demo.train_size, demo.validation_size, demo.image_size, demo.max_objects, seed=0)
    transform = DetectionTransform(processor(demo.image_size), len(SHAPE_CLASSES))
    splits = {name: split.with_transform(transform) for name, split in raw.items()}
    teacher = train_teacher(demo, splits)
    results = [train_student(run, demo, splits, teacher["folder"]) for run in demo.runs]
    table = format_table(teacher, results, demo)
    histories = {r["run"]: r["log_history"] for r in results if r["method"] == "dto"}
    traces = {r["run"]: r["step_trace"] for r in results if r["method"] == "dto"}
    plot = (
        plot_tradeoff(histories, output_dir / "tradeoff.png", traces=traces)
        if histories
        else "no plot (no DTO-KD run)"
    )
    return write_summary(output_dir, asdict(demo), teacher, results, table, plot, start)


def main(argv: list[str] | None = None) -> None:
    (demo,) = HfArgumentParser((DetectionDemoArguments,)).parse_args_into_dataclasses(args=argv)
    hf_logging.set_verbosity_warning()
    logging.basicConfig(level=logging.WARNING)
    run_demo(demo)


if __name__ == "__main__":
    main()
