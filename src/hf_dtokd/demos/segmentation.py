"""The embedded segmentation default: distilling a SegFormer on generated shapes with masks, offline, on 2 CPU cores.

1. Data: ``load_shape_mask_splits`` (the detection demo's scenes: coloured circles / squares / triangles on
   textured backgrounds, 64 px, with masks: background, the three shapes, each shape's boundary ignored (255)),
   prepared by a SegFormer image processor with ``SegmentationTransform``.
2. A teacher SegFormer (4 stages of widths 32-128) is trained with the plain ``transformers.Trainer`` on its own
   loss over ``teacher_train_size`` images (more than the students see, as real teachers are trained on more
   data), evaluated with ``SegmentationMetrics`` and cached in ``<output_dir>/teacher``.
3. A smaller student SegFormer (2 stages, width ``student_width``) is trained per seed from one initialisation
   and data order shared by the runs (so runs pair by seed), with ``SegmentationKDTrainer``: no KD (alpha 0),
   fixed alpha and exact DTO-KD by default, the distillation objective being pixel KD + channel-wise KD (CWD)
   against the task's cross-entropy. The teacher is loaded from its folder by path (the same code path as a Hub
   id). Runs go two at a time in their own processes and are written as they finish (a stopped demo resumes).
4. It prints a table (mIoU over the seeds and per seed on the validation images, share of the teacher's, paired
   differences with their SE to no KD and to fixed alpha, pixel accuracy, wall time, and from the per-step
   traces the share of steps whose gradients conflict, the median applied distillation weight, its
   step-to-step spread and the share of steps at a vertex) and writes ``results.json``, ``results.md`` and
   ``tradeoff.png``.

Run: ``python -m hf_dtokd.demos.segmentation`` (or ``hf-dtokd segment-demo``, ``make demo-segmentation``).
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    HfArgumentParser,
    PrinterCallback,
    SegformerConfig,
    SegformerForSemanticSegmentation,
    SegformerImageProcessor,
    Trainer,
    TrainingArguments,
)
from transformers.utils import logging as hf_logging

from hf_dtokd.data import MASK_IGNORE_INDEX, SEGMENTATION_CLASSES, generate_shape_masks
from hf_dtokd.demos.digits import write_summary
from hf_dtokd.demos.paired_seeds import (
    add_paired_differences,
    load_run,
    per_step_summary,
    percent,
    plotted_runs,
    runs_by_seed,
    save_run,
    signed_points,
    train_jobs,
    vertex_share,
    weights_fingerprint,
)
from hf_dtokd.hub.plotting import plot_tradeoff
from hf_dtokd.losses import resample_logits
from hf_dtokd.signals.signal_config import SegmentationKDConfig
from hf_dtokd.tasks.segmentation.inputs import SegmentationTransform
from hf_dtokd.tasks.segmentation.metrics import SegmentationMetrics
from hf_dtokd.tasks.segmentation.trainer import SegmentationKDTrainer

#: run name -> (method, alpha or None for the demo's --alpha)
RUN_SETTINGS: dict[str, tuple[str, float | None]] = {
    "no_kd": ("fixed", 0.0),
    "fixed": ("fixed", None),
    "fixed_0.1": ("fixed", 0.1),
    "fixed_0.9": ("fixed", 0.9),
    "dto": ("dto", None),
    "dto_amortized": ("dto_amortized", None),
}
RUNS = tuple(RUN_SETTINGS)
ID2LABEL = dict(enumerate(SEGMENTATION_CLASSES))
TEACHER_SEED = 1234  # the teacher's initialisation (its data order: seed 0), whatever the students' seeds


@dataclass
class SegmentationDemoArguments:
    output_dir: str = field(
        default="outputs/segmentation", metadata={"help": "Where the teacher, runs and results go."}
    )
    runs: list[str] = field(
        default_factory=lambda: ["no_kd", "fixed", "dto"], metadata={"help": f"Student runs among {RUNS}."}
    )
    train_size: int = field(default=400, metadata={"help": "Generated images the students train on."})
    teacher_train_size: int = field(
        default=2000, metadata={"help": "Generated images the teacher trains on (the students' and more)."}
    )
    validation_size: int = field(default=300, metadata={"help": "Generated validation images."})
    image_size: int = field(default=64, metadata={"help": "Side of the generated square images (px)."})
    max_objects: int = field(default=3, metadata={"help": "At most this many shapes per image."})
    teacher_steps: int = field(default=3000, metadata={"help": "Optimizer steps of the teacher (cached)."})
    max_steps: int = field(default=1200, metadata={"help": "Optimizer steps of every student run."})
    batch_size: int = field(default=16, metadata={"help": "Per-step batch size (students and teacher)."})
    learning_rate: float = field(
        default=5e-3, metadata={"help": "AdamW learning rate (students and teacher)."}
    )
    student_width: int = field(default=16, metadata={"help": "Student SegFormer width (stages: w, 2w)."})
    temperature: float = field(default=2.0, metadata={"help": "Pixel-KD and CWD temperature."})
    alpha: float = field(default=0.5, metadata={"help": "Distillation weight of the fixed-alpha run."})
    seed: int = field(default=0, metadata={"help": "The first seed (seeds seed, seed + 1, ...)."})
    seeds: int = field(default=3, metadata={"help": "Seeds per student run (paired across runs); >= 1."})
    workers: int = field(
        default=2, metadata={"help": "Student runs trained at once, each in its own process."}
    )
    logging_steps: int = field(default=20, metadata={"help": "Log every this many steps."})

    def __post_init__(self) -> None:
        unknown = [r for r in self.runs if r not in RUNS]
        if unknown:
            raise ValueError(f"unknown runs {unknown}; valid values: {', '.join(RUNS)}")
        if min(self.max_steps, self.teacher_steps, self.seeds, self.workers, self.train_size) < 1:
            raise ValueError("max_steps, teacher_steps, seeds, workers and train_size must be >= 1")
        if self.teacher_train_size < self.train_size:
            raise ValueError(
                f"teacher_train_size ({self.teacher_train_size}) must include the students' {self.train_size} images"
            )


def processor(size: int) -> SegformerImageProcessor:
    return SegformerImageProcessor(size={"height": size, "width": size}, do_reduce_labels=False)


def build_model(role: str, seed: int, width: int = 8) -> SegformerForSemanticSegmentation:
    """The teacher (4 stages, widths 32-128) or a student (2 stages, widths ``width``, ``2 width``)."""
    stages = 4 if role == "teacher" else 2
    widths = [32, 64, 96, 128] if role == "teacher" else [width, 2 * width]
    torch.manual_seed(seed)
    config = SegformerConfig(
        num_channels=3,
        num_encoder_blocks=stages,
        depths=[2] * stages if role == "teacher" else [1] * stages,
        sr_ratios=[4, 2, 1, 1][:stages] if role == "teacher" else [2, 1],
        hidden_sizes=widths,
        patch_sizes=[7, 3, 3, 3][:stages],
        strides=[4, 2, 2, 2][:stages],
        num_attention_heads=[1, 2, 4, 4][:stages],
        mlp_ratios=[4] * stages,
        decoder_hidden_size=64 if role == "teacher" else 2 * width,
        id2label=ID2LABEL,
        label2id={v: k for k, v in ID2LABEL.items()},
        semantic_loss_ignore_index=MASK_IGNORE_INDEX,
    )
    return SegformerForSemanticSegmentation(config)


def load_splits(demo: SegmentationDemoArguments) -> dict[str, Any]:
    """Teacher, student and validation sets (the students' images are the first of the teacher's)."""
    transform = SegmentationTransform(processor(demo.image_size))
    teacher = generate_shape_masks(demo.teacher_train_size, demo.image_size, demo.max_objects, seed=0)
    validation = generate_shape_masks(demo.validation_size, demo.image_size, demo.max_objects, seed=10_000)
    return {
        "teacher_train": teacher.with_transform(transform),
        "train": teacher.select(range(demo.train_size)).with_transform(transform),
        "validation": validation.with_transform(transform),
    }


def common_args(output_dir: Path, demo: SegmentationDemoArguments, steps: int, seed: int) -> dict[str, Any]:
    return dict(
        output_dir=str(output_dir),
        use_cpu=True,
        per_device_train_batch_size=demo.batch_size,
        per_device_eval_batch_size=50,
        max_steps=steps,
        learning_rate=demo.learning_rate,
        warmup_steps=int(0.05 * steps),
        lr_scheduler_type="cosine",
        weight_decay=0.01,
        logging_steps=demo.logging_steps,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


def _scores(metrics: dict[str, float]) -> dict[str, float]:
    return {"miou": metrics["eval_mean_iou"], "pixel_accuracy": metrics["eval_overall_accuracy"]}


def train_teacher(demo: SegmentationDemoArguments, splits: dict[str, Any]) -> dict[str, Any]:
    """Train (or reuse) the teacher with the plain Trainer on its own loss; its mIoU on the validation images."""
    folder = Path(demo.output_dir) / "teacher"
    start = time.perf_counter()
    keys = ("teacher_train_size", "image_size", "max_objects", "teacher_steps", "batch_size", "learning_rate")
    settings = {k: getattr(demo, k) for k in keys}
    marker, timing = folder / "demo_settings.json", folder / "training_time.json"
    cached = (
        (folder / "config.json").is_file() and marker.is_file() and json.loads(marker.read_text()) == settings
    )
    args = TrainingArguments(**common_args(folder / "run", demo, demo.teacher_steps, seed=0))
    trainer = Trainer(
        model=(
            SegformerForSemanticSegmentation.from_pretrained(folder)
            if cached
            else build_model("teacher", TEACHER_SEED)
        ),
        args=args,
        train_dataset=splits["teacher_train"],
        eval_dataset=splits["validation"],
        compute_metrics=SegmentationMetrics(ID2LABEL, MASK_IGNORE_INDEX),
        preprocess_logits_for_metrics=_argmax_at_label_size,
    )
    trainer.remove_callback(PrinterCallback)
    if not cached:
        trainer.train()
        trainer.model.save_pretrained(folder)
        processor(demo.image_size).save_pretrained(folder)
        marker.write_text(json.dumps(settings))
        timing.write_text(json.dumps({"train_seconds": time.perf_counter() - start}))
    scores = _scores(trainer.evaluate())
    print(f"teacher: mIoU {100 * scores['miou']:.1f} ({'cached' if cached else 'trained'})", flush=True)
    trained = json.loads(timing.read_text()) if timing.is_file() else {}
    return {"folder": str(folder), "cached": cached, "train_seconds": trained.get("train_seconds"), **scores}


def _argmax_at_label_size(logits: Any, labels: torch.Tensor) -> torch.Tensor:
    """The plain Trainer's predictions for the metrics: argmax masks at the label size."""
    logits = logits[0] if isinstance(logits, tuple) else logits
    return resample_logits(logits, tuple(labels.shape[-2:])).argmax(1)  # as SegmentationTask's evaluation


def train_student(
    run: str, demo: SegmentationDemoArguments, splits: dict[str, Any], teacher: str, seed: int
) -> dict[str, Any]:
    """One student run from the seed's initialisation (shared by the runs); its mIoU and trade-off trace."""
    method, alpha = RUN_SETTINGS[run]
    config = SegmentationKDConfig(
        **common_args(Path(demo.output_dir) / f"{run}_seed{seed}", demo, demo.max_steps, seed),
        method=method,
        alpha=demo.alpha if alpha is None else alpha,
        temperature=demo.temperature,
        teacher_model_name_or_path=teacher,
        plot_tradeoff=False,
    )
    start = time.perf_counter()
    trainer = SegmentationKDTrainer(
        model=build_model("student", seed, demo.student_width),
        args=config,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        processing_class=processor(demo.image_size),
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    wall = time.perf_counter() - start
    scores = _scores(trainer.evaluate())
    print(f"{run:>14} seed {seed}: mIoU {100 * scores['miou']:.1f} ({wall:.0f} s)", flush=True)
    trace = trainer.step_trace.to_dict()
    weights = trace.get("weight_distill", {}).get("value", [])
    return {
        **per_step_summary([trace]),
        "run": run,
        "seed": seed,
        "method": method,
        "wall_seconds": wall,
        **scores,
        "vertex_share": vertex_share(trace) if method != "fixed" else None,
        "weight_spread": _step_spread(weights),
        "log_history": trainer.state.log_history,
        "step_trace": trace,
    }


def _step_spread(weights: list[float]) -> float | None:
    """Median absolute change of the applied distillation weight from one step to the next."""
    changes = [abs(b - a) for a, b in zip(weights, weights[1:])]
    return statistics.median(changes) if changes else None


def _in_worker(run: str, seed: int, demo: SegmentationDemoArguments, teacher: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    hf_logging.set_verbosity_warning()
    return train_student(run, demo, load_splits(demo), teacher, seed)


#: arguments that do not change a run's result
NOT_RUN_SETTINGS = ("output_dir", "runs", "seed", "seeds", "workers")


def _run_file(demo: SegmentationDemoArguments, run: str, seed: int) -> Path:
    return Path(demo.output_dir) / "runs" / f"{run}_seed{seed}.json"


def train_students(
    demo: SegmentationDemoArguments, splits: dict[str, Any], teacher: str
) -> list[dict[str, Any]]:
    """Every (seed, run): reused from its file when trained with these settings and against this teacher's
    weights (``weights_fingerprint``: a teacher trained again, e.g. ``--retrain_teacher``, has other weights),
    else trained (in workers)."""
    settings = {k: v for k, v in asdict(demo).items() if k not in NOT_RUN_SETTINGS}
    settings["teacher_weights"] = weights_fingerprint(teacher)
    return train_jobs(
        [(run, seed) for seed in range(demo.seed, demo.seed + demo.seeds) for run in demo.runs],
        load=lambda run, seed: load_run(_run_file(demo, run, seed), settings),
        save=lambda result: save_run(_run_file(demo, result["run"], result["seed"]), settings, result),
        workers=demo.workers,
        train_here=lambda run, seed: train_student(run, demo, splits, teacher, seed),
        worker=_in_worker,
        worker_args=(demo, teacher),
    )


def summarise(results: list[dict[str, Any]], teacher_miou: float) -> list[dict[str, Any]]:
    """Per run: mIoU over the seeds, its share of the teacher's, paired differences to no KD and to fixed alpha
    (mean and SE), and the per-step figures pooled over the seeds."""
    by_run = runs_by_seed(results)
    rows = []
    for run, seeds in by_run.items():
        values = [seeds[s]["miou"] for s in sorted(seeds)]
        traces = [seeds[s]["step_trace"] for s in sorted(seeds)]
        shares = [seeds[s]["vertex_share"] for s in seeds if seeds[s]["vertex_share"] is not None]
        spreads = [seeds[s]["weight_spread"] for s in seeds if seeds[s]["weight_spread"] is not None]
        row: dict[str, Any] = {
            "run": run,
            "seeds": sorted(seeds),
            "miou": values,
            "miou_mean": statistics.fmean(values),
            "miou_std": statistics.stdev(values) if len(values) > 1 else None,
            "share_of_teacher": statistics.fmean(values) / teacher_miou if teacher_miou > 0 else None,
            "pixel_accuracy_mean": statistics.fmean(seeds[s]["pixel_accuracy"] for s in seeds),
            "wall_seconds_mean": statistics.fmean(seeds[s]["wall_seconds"] for s in seeds),
            "vertex_share": statistics.fmean(shares) if shares else None,
            "weight_spread": statistics.fmean(spreads) if spreads else None,
            **per_step_summary(traces),
        }
        add_paired_differences(row, run, by_run, "miou")
        rows.append(row)
    return rows


def format_table(teacher: dict[str, Any], rows: list[dict[str, Any]], demo: SegmentationDemoArguments) -> str:
    pp, pct = signed_points, percent

    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    seeds = len(rows[0]["seeds"]) if rows else 0
    trained = teacher.get("train_seconds")
    teacher_time = "-" if trained is None else f"{trained:.0f}" + (" (cached)" if teacher["cached"] else "")
    lines = [
        f"| model | mIoU, mean +- std over {seeds} seeds | each seed | share of teacher | vs no-KD (paired) | vs fixed "
        "(paired) | pixel accuracy | wall time (s) | steps in conflict (all / last quarter) | median applied "
        "weight on distill | its step-to-step change (median) | steps at a vertex |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| teacher SegFormer (4 stages, widths 32-128, {demo.teacher_train_size} images) | {100 * teacher['miou']:.1f} "
        f"| - | - | - | - | {100 * teacher['pixel_accuracy']:.1f} | {teacher_time} | - | - | - | - |",
    ]
    for r in rows:
        spread = "" if r["miou_std"] is None else f" +- {100 * r['miou_std']:.1f}"
        conflict = (
            "-"
            if r["conflict_rate"] is None
            else f"{pct(r['conflict_rate'])} / {pct(r['conflict_rate_last_quarter'])}"
        )
        lines.append(
            f"| student SegFormer (2 stages, width {demo.student_width}, {demo.train_size} images), {r['run']} | "
            f"{100 * r['miou_mean']:.1f}{spread} | {', '.join(f'{100 * v:.1f}' for v in r['miou'])} | "
            f"{pct(r['share_of_teacher'])} | {pp(r['diff_to_no_kd'], r['diff_to_no_kd_se'])} | "
            f"{pp(r['diff_to_fixed'], r['diff_to_fixed_se'])} | {100 * r['pixel_accuracy_mean']:.1f} | "
            f"{r['wall_seconds_mean']:.0f} | {conflict} | {num(r['median_weight_distill'])} | "
            f"{num(r['weight_spread'])} | {pct(r['vertex_share'])} |"
        )
    return "\n".join(lines)


def run_demo(demo: SegmentationDemoArguments) -> dict[str, Any]:
    output_dir = Path(demo.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    splits = load_splits(demo)
    teacher = train_teacher(demo, splits)
    results = train_students(demo, splits, teacher["folder"])
    rows = summarise(results, teacher["miou"])
    table = format_table(teacher, rows, demo)
    dto = plotted_runs(results, demo.seed)
    histories = {f"{r['run']} (seed {r['seed']})": r["log_history"] for r in dto}
    traces = {f"{r['run']} (seed {r['seed']})": r["step_trace"] for r in dto}
    plot = plot_tradeoff(histories, output_dir / "tradeoff.png", traces=traces) if histories else "no plot"
    return write_summary(output_dir, asdict(demo), teacher, results, table, plot, start, {"rows": rows})


def main(argv: list[str] | None = None) -> None:
    (demo,) = HfArgumentParser((SegmentationDemoArguments,)).parse_args_into_dataclasses(args=argv)
    hf_logging.set_verbosity_warning()
    logging.basicConfig(level=logging.WARNING)
    run_demo(demo)


if __name__ == "__main__":
    main()
