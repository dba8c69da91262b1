"""The embedded default: a real distillation on scikit-learn's digits, offline, in minutes on 2 CPU cores.

The regime is one where distillation's effect is larger than seed noise (a teacher labelling a
transfer set):

1. A CNN teacher (a small transformers ResNet, at 24x24 pixels, mean/std 0.5) is trained with the
   plain Trainer on the 1,437 training digits and cached in ``<output_dir>/teacher`` (config,
   weights, image processor).
2. For each seed, the student sees ``labelled_per_class`` labelled training images per class; the
   distillation runs also distil on the other training images, unlabelled (label -100: distillation
   loss only), the no-KD run has the labelled images alone. The student (a ResNet of stage widths
   8-16-32 at 32x32 pixels, ImageNet mean/std; ``--student vit``: a 4-layer ViT) is trained from the
   same initialisation, data order and budget by: no KD, fixed-alpha KD, exact DTO-KD and amortized
   DTO-KD; opt-in runs (``--runs``, ``SIGNAL_RUNS``) add feature KD through each projector and DeiT's
   distillation token (a two-head DeiT student), each with fixed alpha and exact DTO-KD. The teacher
   is loaded from its folder by path (the same code path as a Hub id) and gets the student's pixels
   converted to its own resolution and normalisation.
3. It prints a table (top-1 on the 360 test images as mean +- std over the seeds, each seed's value,
   the paired difference to no-KD with its standard error, time per step, pi) and writes
   ``results.json``, ``results.md`` and ``tradeoff.png`` (the first seed's trade-off over steps). Every
   student is saved with its image processor, ready for ``hf-dtokd-classify --model_name_or_path``.

Run: ``python -m hf_dtokd.demos.digits`` (or ``hf-dtokd-demo``); ``--help`` lists the flags.
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
from datasets.utils import logging as datasets_logging
from transformers import (
    DefaultDataCollator,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    HfArgumentParser,
    PrinterCallback,
    ResNetConfig,
    ResNetForImageClassification,
    Trainer,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)
from transformers.utils import logging as hf_logging

from hf_dtokd.data import load_digits_splits, preprocess_images, transfer_set
from hf_dtokd.demos.paired_seeds import cpu_name, paired_difference, runs_by_seed
from hf_dtokd.hub.plotting import plot_tradeoff
from hf_dtokd.tasks.classification.deit_token import DeiTTokenTrainer
from hf_dtokd.tasks.classification.feature_kd import FeatureKDTrainer
from hf_dtokd.tasks.classification.metrics import classification_metrics
from hf_dtokd.tasks.classification.trainer import DTOKDTrainer
from hf_dtokd.trainer.dtokd_config import DTOKDConfig

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
RUNS = ("no_kd", "fixed", "dto", "dto_amortized")
#: Opt-in runs with other signals (``--runs``): feature KD through each projector (grouped into DTO-KD's two
#: objectives) and DeiT's distillation token (a two-head DeiT student of the ViT's shape), each with exact
#: DTO-KD and with fixed alpha.
SIGNAL_RUNS = tuple(
    f"{signal}_{method}"
    for signal in ("feature_linear", "feature_vkd", "feature_mokd", "deit_token")
    for method in ("fixed", "dto")
)


STUDENTS = ("resnet", "vit")


@dataclass
class DemoArguments:
    output_dir: str = field(
        default="outputs/digits", metadata={"help": "Where the teacher, results and plot go."}
    )
    runs: list[str] = field(
        default_factory=lambda: list(RUNS),
        metadata={"help": f"Student runs among {RUNS + SIGNAL_RUNS} (default: {RUNS})."},
    )
    seeds: int = field(
        default=5, metadata={"help": "Seeds per run (labelled subset, initialisation, data order); >= 1."}
    )
    labelled_per_class: int = field(
        default=20,
        metadata={
            "help": "Labelled training images per class; the distillation runs see the rest unlabelled."
        },
    )
    student: str = field(
        default="resnet",
        metadata={
            "help": "The student: a ResNet 8-16-32 or a 4-layer ViT (the DeiT-token runs: always a DeiT).",
            "choices": STUDENTS,
        },
    )
    max_steps: int = field(default=600, metadata={"help": "Optimizer steps of every student run."})
    teacher_steps: int = field(
        default=300, metadata={"help": "Optimizer steps of the teacher (trained once, cached)."}
    )
    batch_size: int = field(default=32, metadata={"help": "Per-step batch size of the students."})
    learning_rate: float = field(default=2e-3, metadata={"help": "AdamW learning rate of the students."})
    temperature: float = field(default=4.0, metadata={"help": "Distillation temperature."})
    alpha: float = field(default=0.5, metadata={"help": "Distillation weight of the fixed-alpha run."})
    seed: int = field(default=0, metadata={"help": "The first seed (seeds seed, seed + 1, ... are run)."})
    logging_steps: int = field(default=10, metadata={"help": "Log (and plot) every this many steps."})
    retrain_teacher: bool = field(
        default=False, metadata={"help": "Train the teacher even when one is cached."}
    )

    def __post_init__(self) -> None:
        unknown = [r for r in self.runs if r not in RUNS + SIGNAL_RUNS]
        if unknown:
            raise ValueError(f"unknown runs {unknown}; valid values: {', '.join(RUNS + SIGNAL_RUNS)}")
        if self.max_steps < 1 or self.teacher_steps < 1 or self.seeds < 1 or self.labelled_per_class < 1:
            raise ValueError("max_steps, teacher_steps, seeds and labelled_per_class must be >= 1")
        if self.student not in STUDENTS:
            raise ValueError(f"unknown student {self.student!r}; valid values: {', '.join(STUDENTS)}")


def student_processor() -> ViTImageProcessor:
    return ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    )


def teacher_processor() -> ViTImageProcessor:
    return ViTImageProcessor(size={"height": 24, "width": 24}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def small_resnet(
    seed: int, labels: list[str], embedding: int, widths: list[int]
) -> ResNetForImageClassification:
    """A ResNet of one basic block per stage, seeded, with the digits' label names."""
    torch.manual_seed(seed)
    config = ResNetConfig(
        embedding_size=embedding,
        hidden_sizes=widths,
        depths=[1] * len(widths),
        layer_type="basic",
        downsample_in_first_stage=False,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
    )
    return ResNetForImageClassification(config)


def build_resnet_student(seed: int, labels: list[str], width: int = 32) -> ResNetForImageClassification:
    """The default student: a ResNet of stage widths width/4, width/2, width."""
    return small_resnet(seed, labels, width // 4, [width // 4, width // 2, width])


def build_student(seed: int, labels: list[str], two_head: bool = False) -> ViTForImageClassification:
    """The ViT student (``--student vit``); ``two_head``: a DeiT of the same shape with a distillation token
    and head."""
    torch.manual_seed(seed)
    config = (DeiTConfig if two_head else ViTConfig)(
        image_size=32,
        patch_size=4,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
    )
    return DeiTForImageClassificationWithTeacher(config) if two_head else ViTForImageClassification(config)


def build_teacher(labels: list[str]) -> ResNetForImageClassification:
    """The teacher: a ResNet of stage widths 32-64-128."""
    return small_resnet(1234, labels, 32, [32, 64, 128])


def common_args(
    output_dir: Path, demo: DemoArguments, seed: int | None = None, **overrides: Any
) -> dict[str, Any]:
    seed = demo.seed if seed is None else seed
    args = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        per_device_train_batch_size=demo.batch_size,
        per_device_eval_batch_size=256,
        max_steps=demo.max_steps,
        learning_rate=demo.learning_rate,
        warmup_steps=int(0.05 * demo.max_steps),
        lr_scheduler_type="cosine",
        weight_decay=0.05,
        logging_steps=demo.logging_steps,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
    )
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
        **common_args(
            folder / "run",
            demo,
            seed=0,
            max_steps=demo.teacher_steps,
            learning_rate=3e-3,
            per_device_train_batch_size=64,
        )
    )
    trainer = Trainer(
        model=build_teacher(labels),
        args=args,
        train_dataset=train,
        eval_dataset=test,
        data_collator=DefaultDataCollator(),
        compute_metrics=classification_metrics,
    )
    trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    trainer.train()
    metrics = {"top1": trainer.evaluate()["eval_top1"], "wall_seconds": time.perf_counter() - start}
    print(f"teacher: top-1 {100 * metrics['top1']:.1f} % ({metrics['wall_seconds']:.0f} s)", flush=True)
    trainer.model.save_pretrained(folder)
    processor.save_pretrained(folder)
    metrics_file.write_text(json.dumps(metrics, indent=2))
    return metrics


def train_student(
    run: str, demo: DemoArguments, splits: dict[str, Any], labels: list[str], seed: int | None = None
) -> dict[str, Any]:
    """One student run of one seed: its labelled subset (plus the unlabelled pool when distilling)."""
    seed = demo.seed if seed is None else seed
    processor = student_processor()
    pool = preprocess_images(splits["train"], processor)
    train = transfer_set(pool, demo.labelled_per_class, seed, unlabelled_pool=run != "no_kd")
    test = preprocess_images(splits["test"], processor)
    output_dir = Path(demo.output_dir) / f"{run}_seed{seed}"
    signal, method = run.rsplit("_", 1) if run in SIGNAL_RUNS else ("logits", run)
    if signal == "deit_token" or demo.student == "vit":
        student = build_student(seed, labels, two_head=signal == "deit_token")
    else:
        student = build_resnet_student(seed, labels)
    kwargs = dict(
        model=student,
        train_dataset=train,
        eval_dataset=test,
        data_collator=DefaultDataCollator(),
        processing_class=processor,  # saved beside the student
    )
    start = time.perf_counter()
    if run == "no_kd":
        args = TrainingArguments(**common_args(output_dir, demo, seed))
        trainer: Trainer = Trainer(args=args, compute_metrics=classification_metrics, **kwargs)
    else:
        config = DTOKDConfig(
            **common_args(output_dir, demo, seed),
            method=method,
            alpha=demo.alpha,
            temperature=demo.temperature,
            teacher_model_name_or_path=str(Path(demo.output_dir) / "teacher"),
        )
        if signal.startswith("feature_"):
            trainer = FeatureKDTrainer(
                args=config, projector=signal.split("_", 1)[1], group_features=True, **kwargs
            )
        elif signal == "deit_token":
            trainer = DeiTTokenTrainer(args=config, distillation="hard", **kwargs)
        else:
            trainer = DTOKDTrainer(args=config, **kwargs)
    trainer.remove_callback(PrinterCallback)  # one line per run below, not every log
    trainer.train()
    wall = time.perf_counter() - start
    metrics = trainer.evaluate()
    history = trainer.state.log_history
    pis = [row["pi_distill"] for row in history if "pi_distill" in row]
    trainer.save_model(str(output_dir / "student"))
    print(f"{run:>16} seed {seed}: top-1 {100 * metrics['eval_top1']:.1f} % ({wall:.0f} s)", flush=True)
    return {
        "run": run,
        "seed": seed,
        "top1": metrics["eval_top1"],
        "top5": metrics.get("eval_top5"),
        "wall_seconds": wall,
        "seconds_per_step": wall / demo.max_steps,
        "final_pi_distill": pis[-1] if pis else None,
        "mean_pi_distill": sum(pis) / len(pis) if pis else None,
        "log_history": history,
        "step_trace": trainer.step_trace.to_dict() if isinstance(trainer, DTOKDTrainer) else {},
    }


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run: top-1 over the seeds (mean, std, each seed) and the paired difference to no-KD (mean, SE)."""
    by_run = runs_by_seed(results)
    rows = []
    for run, seeds in by_run.items():
        top1 = [seeds[s]["top1"] for s in sorted(seeds)]
        row: dict[str, Any] = {
            "run": run,
            "seeds": sorted(seeds),
            "top1": top1,
            "top1_mean": statistics.fmean(top1),
            "top1_std": statistics.stdev(top1) if len(top1) > 1 else None,
            "seconds_per_step": statistics.fmean(seeds[s]["seconds_per_step"] for s in seeds),
            "mean_pi_distill": None,
            "diff_to_no_kd": None,
            "diff_se": None,
        }
        pis = [seeds[s]["mean_pi_distill"] for s in seeds if seeds[s]["mean_pi_distill"] is not None]
        if pis:
            row["mean_pi_distill"] = statistics.fmean(pis)
        if run != "no_kd" and "no_kd" in by_run:
            row["diff_to_no_kd"], row["diff_se"] = paired_difference(seeds, by_run["no_kd"], "top1")
        rows.append(row)
    return rows


def format_table(teacher: dict[str, float], rows: list[dict[str, Any]], demo: DemoArguments) -> str:
    def pp(value: float | None, se: float | None) -> str:
        if value is None:
            return "-"
        return f"{100 * value:+.1f}" + ("" if se is None else f" +- {100 * se:.1f}")

    seeds = len(rows[0]["seeds"]) if rows else 0
    lines = [
        f"| model | top-1 % (360 test images), mean +- std over {seeds} seeds | each seed | "
        "vs no-KD (pp, paired mean +- SE) | s / step | mean pi_distill |",
        "|---|---|---|---|---|---|",
        f"| teacher (ResNet, 24 px, all 1,437 labels) | {100 * teacher['top1']:.1f} | - | - | - | - |",
    ]
    for r in rows:
        model = "DeiT (2 heads)" if r["run"].startswith("deit") else demo.student
        spread = "" if r["top1_std"] is None else f" +- {100 * r['top1_std']:.1f}"
        each = ", ".join(f"{100 * v:.1f}" for v in r["top1"])
        pi = "-" if r["mean_pi_distill"] is None else f"{r['mean_pi_distill']:.3f}"
        lines.append(
            f"| student {model}, {r['run']} | {100 * r['top1_mean']:.1f}{spread} | {each} | "
            f"{pp(r['diff_to_no_kd'], r['diff_se'])} | {r['seconds_per_step']:.3f} | {pi} |"
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
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a demo's ``results.json`` (with ``extra`` entries) and ``results.md`` (the table), print the table;
    return the summary."""
    summary = {
        "arguments": arguments,
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_name()},
        "teacher": teacher,
        "students": results,
        "total_wall_seconds": time.perf_counter() - start,
        "table": table,
        **(extra or {}),
    }
    (output_dir / "results.json").write_text(json.dumps(summary, indent=2))
    (output_dir / "results.md").write_text(table + "\n")
    print(table)
    print(
        f"\nwrote {output_dir / 'results.json'}, {output_dir / 'results.md'} and {plot} "
        f"({summary['total_wall_seconds']:.0f} s in all)"
    )
    return summary


def run_demo(demo: DemoArguments) -> dict[str, Any]:
    output_dir = Path(demo.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    splits = load_digits_splits(seed=0)
    labels = splits["train"].features["label"].names
    start = time.perf_counter()
    teacher = train_teacher(demo, splits, labels)
    seeds = range(demo.seed, demo.seed + demo.seeds)
    results = [train_student(run, demo, splits, labels, seed) for seed in seeds for run in demo.runs]
    rows = summarise(results)
    table = format_table(teacher, rows, demo)
    histories = {
        r["run"]: r["log_history"] for r in results if r["run"] != "no_kd" and r["seed"] == demo.seed
    }
    logged = any("pi_distill" in row for history in histories.values() for row in history)
    traces = {r["run"]: r["step_trace"] for r in results if r["run"] in histories and r["seed"] == demo.seed}
    plot = (
        plot_tradeoff(histories, output_dir / "tradeoff.png", traces=traces)
        if logged
        else "no plot (nothing logged)"
    )
    return write_summary(output_dir, asdict(demo), teacher, results, table, plot, start, {"rows": rows})


def main(argv: list[str] | None = None) -> None:
    (demo,) = HfArgumentParser((DemoArguments,)).parse_args_into_dataclasses(args=argv)
    hf_logging.set_verbosity_warning()
    hf_logging.disable_progress_bar()  # one line per run is printed instead
    datasets_logging.disable_progress_bar()
    logging.basicConfig(level=logging.WARNING)
    run_demo(demo)


if __name__ == "__main__":
    main()


__all__ = [
    "DemoArguments",
    "build_resnet_student",
    "main",
    "run_demo",
    "summarise",
    "train_student",
    "train_teacher",
]
