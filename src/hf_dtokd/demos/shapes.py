"""The embedded detection default: distilling an RT-DETR on generated shapes, offline, on 2 CPU cores.

The regime is meant for distillation to matter and for seeds to agree: the teacher is trained on sixteen
times the students' labelled images (as real teachers are trained on more data), and the KD runs distil on the
teacher's other images too, without their labels (the teacher's advantage is its data); the students are small
and start, as real students do, from a pretrained backbone (so that only their head starts at random); without
KD they reached 61-66 % of the teacher's mAP on the validation pilots. The pilots that chose it are in the
detection docs.

1. Data: ``generate_shapes`` (coloured circles / squares / triangles on textured backgrounds, 64 px, 1-2
   objects per image, COCO boxes): the teacher's 3,200 training images, of which the students have the labels
   of the first 200 and the KD runs see the other 3,000 without labels (``unlabelled_size``, 16 per step:
   ``DetectionKDTrainer``'s ``unlabelled_dataset``); 500 validation images (another seed: the pilots that
   chose the settings read them) and 500 test images (a third seed: the table reads them, once per run),
   prepared by the RT-DETR image processor with ``DetectionTransform``.
2. A teacher RT-DETR (ResNet backbone of widths 16-32, d_model 64, 10 queries) is trained for 2,400 steps
   with the plain ``transformers.Trainer`` on its own detection loss, evaluated with ``DetectionMetrics``
   and cached in ``<models_dir>/teacher`` (``models_dir`` defaults to ``output_dir``; reused while its data,
   budget and seed are unchanged; each run records the fingerprint of the teacher's and backbone's weights and
   is reused only against the same, since the same settings train other weights on another machine).
3. The students' backbone (``shapes_backbone``): the ResNet of a student-shaped RT-DETR trained class-agnostic
   on 3,200 generated images of a seed no detection split uses, cached in ``<models_dir>/student_backbone``.
4. A student RT-DETR (that backbone, width 8, d_model 32, 8 queries) is trained for 2,400 steps, per seed from
   one initialisation of its head and one data order shared by the runs (so runs pair by seed), with
   ``DetectionKDTrainer``: no KD (alpha 0, on the labelled images alone), fixed alpha 0.5 and exact DTO-KD with
   the Gram over the parameters both objectives reach, on the two objectives (class KD + box KD, the detection
   loss; ``--token_projector`` adds token KD through a projector, the paper's detection signal, which the
   validation pilots did not keep). The teacher is loaded from its folder by path (the same code path as a Hub
   id). Three seeds by default, two runs at a time in their own processes; ``--runs`` adds the other rows
   (fixed alpha 0.1 / 0.9, the Gram over all parameters, the one-loss rule, raw instead of log gradients, the
   amortized form; ``--row_seeds RUN=N`` gives a row its own seed count, paired over the seeds it shares).
5. It prints a table (mAP over the seeds and per seed, its share of the teacher's, paired differences to
   no-KD and to fixed alpha, wall time, pi, and from the per-step traces: the share of optimizer steps at a
   vertex of the simplex, the share whose two gradients conflict, the median weights applied and how much
   the distillation weight moves from one step to the next) and writes ``results.json``, ``results.md`` and
   ``tradeoff.png`` (with the per-step cosines and weights).

Run: ``python -m hf_dtokd.demos.shapes`` (or ``hf-dtokd detect-demo``); ``--help`` lists the flags.
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
    RTDetrImageProcessor,
    Trainer,
    TrainingArguments,
)
from transformers.utils import logging as hf_logging

from hf_dtokd.data import SHAPE_CLASSES, generate_shapes, load_shapes_splits
from hf_dtokd.demos.digits import write_summary
from hf_dtokd.demos.paired_seeds import (
    add_paired_differences,
    cpu_name,
    load_run,
    parse_row_seeds,
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
from hf_dtokd.demos.shapes_backbone import detector_training_args, pretrain_backbone, resnet_config
from hf_dtokd.hub.plotting import plot_tradeoff
from hf_dtokd.signals.signal_config import DetectionKDConfig
from hf_dtokd.tasks.detection.inputs import DetectionTransform, collate_detection
from hf_dtokd.tasks.detection.metrics import DetectionMetrics
from hf_dtokd.tasks.detection.models import build_detector
from hf_dtokd.tasks.detection.trainer import DetectionKDTrainer
from hf_dtokd.tasks.detection.unlabelled import UnlabelledImageTransform

logger = logging.getLogger(__name__)

#: run name -> (method, alpha or None for the demo's --alpha, extra DetectionKDConfig fields)
RUN_SETTINGS: dict[str, tuple[str, float | None, dict[str, Any]]] = {
    "no_kd": ("fixed", 0.0, {}),
    # a control: alpha 0 given the unlabelled images, so the student also runs their forward but their KD terms
    # weigh nothing (the gradient is no KD's): what the second forward alone changes (the batch-norm running
    # statistics it updates), against "fixed alpha 0.1 falls below no KD because of the unlabelled forward"
    "no_kd_unlabelled": ("fixed", 0.0, {}),
    "fixed": ("fixed", None, {}),
    "fixed_0.1": ("fixed", 0.1, {}),
    "fixed_0.9": ("fixed", 0.9, {}),
    # a controlled variant: fixed alpha at the level DTO-KD's applied weights reach on the test table (a median
    # 0.93 on the raw distillation loss), against "DTO-KD's gain is only the level of its weight"
    "fixed_0.93": ("fixed", 0.93, {}),
    "dto": ("dto", None, {}),
    "dto_shared": ("dto", None, {"gram_parameters": "shared"}),
    "dto_shared_own": ("dto", None, {"gram_parameters": "shared", "one_loss_parameters": "own"}),
    # a controlled variant: the min-norm point of the raw gradients (weights = pi, not pi / L), which the
    # detection loss's larger scale does not push towards distillation
    "dto_shared_raw": ("dto", None, {"gram_parameters": "shared", "log_gradients": False}),
    "dto_amortized": ("dto_amortized", None, {}),
    # the paper's detection signal: the matched queries' decoder states through a VkD projector, added to the KD
    "fixed_token_kd": ("fixed", None, {"token_projector": "vkd"}),
    "dto_token_kd": ("dto", None, {"token_projector": "vkd"}),
}
RUNS = tuple(RUN_SETTINGS)
#: the runs at alpha 0: no distillation term, so no token projector either
WITHOUT_KD = ("no_kd", "no_kd_unlabelled")
#: no KD (alpha 0), fixed alpha and DTO-KD in the form chosen on the validation images (the Gram over the
#: parameters both objectives reach): the ranking the demo is for
DEFAULT_RUNS = ("no_kd", "fixed", "dto_shared")
ID2LABEL = dict(enumerate(SHAPE_CLASSES))
BACKBONE_SEED = 4321  # the initialisation of the detector that pretrains the students' backbone
IMAGE_SIZE = 64  # a multiple of 32: RT-DETR's strides 8 / 16 / 32 must give maps its FPN can merge


@dataclass
class DetectionDemoArguments:
    output_dir: str = field(
        default="outputs/shapes", metadata={"help": "Where the teacher, results and plot go."}
    )
    runs: list[str] = field(
        default_factory=lambda: list(DEFAULT_RUNS), metadata={"help": f"Student runs among {RUNS}."}
    )
    teacher_train_size: int | None = field(
        default=3200,
        metadata={
            "help": "Generated images the teacher trains on (None: train_size). Larger than train_size, the "
            "teacher sees the students' images and more, as real teachers are trained on more data."
        },
    )
    teacher_width: int = field(
        default=16, metadata={"help": "Teacher backbone width (stages: w, w, 2w, 2w)."}
    )
    teacher_d_model: int = field(default=64, metadata={"help": "Teacher transformer width."})
    ema_decay: float = field(
        default=0.0,
        metadata={
            "help": "Students: evaluate and keep a moving average of the weights (0 = off), with timm's warm-up "
            "(the decay ramps up from 0, so the random initial weights do not linger in the average)."
        },
    )
    token_projector: str = field(
        default="none",
        metadata={
            "help": "'vkd', 'linear', 'mokd': every KD run also matches the matched queries' decoder states through "
            "this projector (the paper's detection signal) on top of class and box KD; 'none' (chosen on the "
            "validation pilots): class and box KD only (runs named *_token_kd add a VkD projector either way).",
            "choices": ["none", "linear", "vkd", "mokd"],
        },
    )
    test_size: int = field(
        default=500,
        metadata={
            "help": "Generated test images (another seed than the validation images; 0 = none). The students' "
            "settings are chosen on the validation images; the table is read on the test images."
        },
    )
    evaluate_on: str = field(
        default="test",
        metadata={
            "help": "The split the final table scores (teacher and students): 'validation' (pilots) or 'test' "
            "(needs test_size > 0; read once per run, at its end).",
            "choices": ["validation", "test"],
        },
    )
    models_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where the teacher and the students' pretrained backbone are kept (reused when trained with "
            "these settings, else trained there); default: <output_dir>. Training them again on another machine "
            "gives other weights (a detector's training amplifies float rounding), so a table that grows over "
            "sessions keeps them here, committed, and each run records their fingerprints."
        },
    )
    runs_dir: str | None = field(
        default=None,
        metadata={
            "help": "Keep each finished run as gzipped JSON here (a folder that can be committed, so that a demo "
            "longer than a session goes on run by run); default: <output_dir>/runs (plain JSON)."
        },
    )
    max_steps: int = field(default=2400, metadata={"help": "Optimizer steps of every student run."})
    teacher_steps: int = field(default=2400, metadata={"help": "Optimizer steps of the teacher (cached)."})
    batch_size: int = field(default=16, metadata={"help": "Per-step batch size (students and teacher)."})
    learning_rate: float = field(default=2e-3, metadata={"help": "AdamW learning rate of the students."})
    teacher_learning_rate: float = field(
        default=2e-3, metadata={"help": "AdamW learning rate of the teacher (cached with it)."}
    )
    teacher_seed: int = field(
        default=1235,
        metadata={
            "help": "The teacher's initialisation (its data order: seed 0), whatever the students' seeds. The "
            "recipe is a lottery (three trainings: 24.6, 48.3 and 53.3 validation mAP): the test table's teacher "
            "is the best of them on the validation images, committed with its seed."
        },
    )
    temperature: float = field(default=2.0, metadata={"help": "Class-KD temperature."})
    alpha: float = field(default=0.5, metadata={"help": "Distillation weight of the fixed-alpha run."})
    train_size: int = field(default=200, metadata={"help": "Generated training images of the students."})
    unlabelled_size: int = field(
        default=3000,
        metadata={
            "help": "The teacher's training images after the students' train_size, given to the KD runs without "
            "their labels (DetectionKDTrainer's unlabelled_dataset; 0 = none): the teacher's advantage is its "
            "data. The no-KD run trains on the labelled images alone."
        },
    )
    unlabelled_batch_size: int = field(
        default=16, metadata={"help": "Unlabelled images per step of the KD runs (with unlabelled_size)."}
    )
    validation_size: int = field(default=500, metadata={"help": "Generated validation images."})
    seed: int = field(
        default=0,
        metadata={"help": "The first seed (seeds seed, seed + 1, ...): initialisation and data order."},
    )
    seeds: int = field(default=3, metadata={"help": "Seeds per student run (paired across runs); >= 1."})
    row_seeds: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Another seed count for named runs, as RUN=N (e.g. fixed_0.1=5): that run trains seeds seed, "
            "..., seed + N - 1, and its paired differences are taken over the seeds it shares with no KD and "
            "fixed alpha. For rows whose paired SE is already small, so that the seeds go where the noise is."
        },
    )
    workers: int = field(
        default=2,
        metadata={
            "help": "Student runs trained at once, each in its own process with (cores / workers) threads; "
            "1 trains them one after another in this process."
        },
    )
    logging_steps: int = field(default=20, metadata={"help": "Log (and plot) every this many steps."})
    retrain_teacher: bool = field(
        default=False, metadata={"help": "Train the teacher even when one is cached."}
    )
    student_width: int = field(
        default=8, metadata={"help": "Student backbone width (stages: w, w, 2w, 2w; teacher: 16)."}
    )
    student_d_model: int = field(default=32, metadata={"help": "Student transformer width (teacher: 64)."})
    student_backbone: str = field(
        default="pretrained",
        metadata={
            "help": "'pretrained': the students' ResNet starts from a backbone pretrained (cached in "
            "<models_dir>/student_backbone) by class-agnostic detection on generated images no detection split "
            "uses, as real students start from a pretrained backbone; 'random': from scratch.",
            "choices": ["pretrained", "random"],
        },
    )
    backbone_pretrain_images: int = field(
        default=3200, metadata={"help": "Generated images the students' backbone is pretrained on."}
    )
    backbone_pretrain_steps: int = field(
        default=2400,
        metadata={"help": "Optimizer steps of the backbone's class-agnostic pretraining (cached)."},
    )
    image_size: int = field(
        default=IMAGE_SIZE, metadata={"help": "Side of the generated square images (px)."}
    )
    max_objects: int = field(default=2, metadata={"help": "At most this many shapes per generated image."})

    def seeds_of_run(self) -> dict[str, range]:
        """The seeds each run trains: ``seeds`` of them from ``seed``, or the count ``row_seeds`` names for it."""
        counts = parse_row_seeds(self.row_seeds, self.runs)
        return {run: range(self.seed, self.seed + counts.get(run, self.seeds)) for run in self.runs}

    def __post_init__(self) -> None:
        unknown = [r for r in self.runs if r not in RUNS]
        if unknown:
            raise ValueError(f"unknown runs {unknown}; valid values: {', '.join(RUNS)}")
        if min(self.max_steps, self.teacher_steps, self.seeds, self.workers) < 1:
            raise ValueError(
                f"max_steps, teacher_steps, seeds and workers must be >= 1, got {self.max_steps}, "
                f"{self.teacher_steps}, {self.seeds} and {self.workers}"
            )
        self.seeds_of_run()  # validates row_seeds
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(
                f"image_size must be a multiple of 32 (RT-DETR's feature strides 8 / 16 / 32), got {self.image_size}"
            )
        if (
            self.student_backbone == "pretrained"
            and min(self.backbone_pretrain_images, self.backbone_pretrain_steps) < 1
        ):
            raise ValueError(
                "a pretrained student backbone needs backbone_pretrain_images and backbone_pretrain_steps >= 1, got "
                f"{self.backbone_pretrain_images} and {self.backbone_pretrain_steps} (or pass --student_backbone random)"
            )
        if self.max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {self.max_objects}")
        teacher_images = self.teacher_train_size or self.train_size
        if self.unlabelled_size < 0 or self.unlabelled_batch_size < 1:
            raise ValueError(
                f"unlabelled_size must be >= 0 and unlabelled_batch_size >= 1, got {self.unlabelled_size} and "
                f"{self.unlabelled_batch_size}"
            )
        if self.unlabelled_size and self.train_size + self.unlabelled_size > teacher_images:
            raise ValueError(
                f"unlabelled_size={self.unlabelled_size} images after the students' {self.train_size} exceed the "
                f"teacher's {teacher_images} training images; lower unlabelled_size or raise teacher_train_size"
            )
        if self.evaluate_on == "test" and self.test_size < 1:
            raise ValueError("evaluate_on='test' needs test images: pass --test_size (e.g. 500)")


def processor(size: int = IMAGE_SIZE) -> RTDetrImageProcessor:
    return RTDetrImageProcessor(size={"height": size, "width": size})


def build_model(
    role: str,
    seed: int,
    width: int = 16,
    d_model: int = 64,
    backbone: str | None = None,
    id2label: dict[int, str] = ID2LABEL,
) -> Any:
    """The teacher (10 queries) or a student (8 queries) of the given backbone width and transformer width;
    with ``backbone`` (a folder or Hub id of a ResNet of that width) its weights, else a random backbone."""
    queries = 10 if role == "teacher" else 8
    torch.manual_seed(seed)
    return build_detector(
        "rt_detr",
        resnet_config(width) if backbone is None else backbone,
        id2label,
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


def common_args(
    output_dir: Path, demo: DetectionDemoArguments, steps: int, seed: int, learning_rate: float
) -> dict[str, Any]:
    return detector_training_args(
        output_dir, demo.batch_size, steps, learning_rate, seed, seed, demo.logging_steps
    )


#: a freshly trained teacher below this mAP is reported as weak (the committed one scores 53.1 on the test images)
WEAK_TEACHER_MAP = 0.45


def train_teacher(demo: DetectionDemoArguments, splits: dict[str, Any]) -> dict[str, Any]:
    """Train (or reuse) the teacher with the plain Trainer; its mAP on the validation images."""
    folder = models_folder(demo) / "teacher"
    start = time.perf_counter()
    # reused only when it was trained on the same data and budget
    # (its images are the first teacher_train_size generated ones, whatever the students' train_size)
    settings = {
        "teacher_images": demo.teacher_train_size or demo.train_size,
        **{
            k: getattr(demo, k)
            for k in (
                "image_size",
                "max_objects",
                "teacher_width",
                "teacher_d_model",
                "teacher_steps",
                "batch_size",
            )
        },
        "learning_rate": demo.teacher_learning_rate,
        "seed": demo.teacher_seed,
    }
    marker = folder / "demo_settings.json"
    cached = (
        (folder / "config.json").is_file()
        and marker.is_file()
        and json.loads(marker.read_text()) == settings
        and not demo.retrain_teacher
    )
    model = build_model("teacher", demo.teacher_seed, demo.teacher_width, demo.teacher_d_model)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            **common_args(
                folder / "run", demo, demo.teacher_steps, seed=0, learning_rate=demo.teacher_learning_rate
            )
        ),
        train_dataset=splits.get("teacher_train", splits["train"]),
        eval_dataset=splits["validation"],
        data_collator=collate_detection,
        compute_metrics=DetectionMetrics(processor(demo.image_size), ID2LABEL),
    )
    # the training run's time, reported again when the teacher is reused
    timing = folder / "training_time.json"
    trainer.remove_callback(PrinterCallback)  # one line per model is printed, not every log
    if cached:
        trainer.model = type(model).from_pretrained(folder)
    else:
        trainer.train()
        trainer.model.save_pretrained(folder)
        processor(demo.image_size).save_pretrained(folder)
        marker.write_text(json.dumps(settings))
        timing.write_text(
            json.dumps({"train_seconds": time.perf_counter() - start, "threads": torch.get_num_threads()})
        )
    metrics = trainer.evaluate(splits[demo.evaluate_on])
    print(f"teacher: mAP {100 * metrics['eval_map']:.1f} ({'cached' if cached else 'trained'})", flush=True)
    if not cached and metrics["eval_map"] < WEAK_TEACHER_MAP:
        logger.warning(
            "the teacher trained here scored %.1f mAP, below %.0f: its recipe is a lottery over initialisations "
            "(24.6, 48.3 and 53.3 validation mAP), and the students distil what it knows, so this demo's table will "
            "not match the documented one. Use the documented teacher (the repository's "
            "benchmarks/results/detection_demo/models, through --models_dir) or another --teacher_seed.",
            100 * metrics["eval_map"],
            100 * WEAK_TEACHER_MAP,
        )
    trained = json.loads(timing.read_text()) if timing.is_file() else {}
    return {
        "folder": str(folder),
        "cached": cached,
        "wall_seconds": time.perf_counter() - start,
        "train_seconds": trained.get("train_seconds"),
        "train_threads": trained.get("threads"),
        **_maps(metrics),
    }


def models_folder(demo: DetectionDemoArguments) -> Path:
    """Where the teacher and the students' backbone are kept (``models_dir``, default ``output_dir``)."""
    return Path(demo.models_dir or demo.output_dir)


def student_backbone(demo: DetectionDemoArguments) -> str | None:
    """The folder of the students' pretrained backbone (None: random backbones)."""
    return str(models_folder(demo) / "student_backbone") if demo.student_backbone == "pretrained" else None


def _maps(metrics: dict[str, float]) -> dict[str, float]:
    return {name: metrics[f"eval_{name}"] for name in ("map", "map_50", "map_75")}


def train_student(
    run: str, demo: DetectionDemoArguments, splits: dict[str, Any], teacher: str, seed: int
) -> dict[str, Any]:
    """One student run from the seed's initialisation (shared by the runs); its mAP and trade-off trace."""
    method, alpha, extra = RUN_SETTINGS[run]
    alpha = demo.alpha if alpha is None else alpha
    if demo.ema_decay:
        extra = {**extra, "ema_decay": demo.ema_decay, "ema_warmup": True}
    if demo.token_projector != "none" and run not in WITHOUT_KD:
        extra = {"token_projector": demo.token_projector, **extra}
    # no KD ignores unlabelled images (alpha 0: the KD terms weigh nothing), so it is not given them
    unlabelled = splits.get("unlabelled") if run != "no_kd" else None
    if unlabelled is not None:
        extra = {**extra, "unlabelled_batch_size": demo.unlabelled_batch_size}
    config = DetectionKDConfig(
        **extra,
        **common_args(
            Path(demo.output_dir) / f"{run}_seed{seed}", demo, demo.max_steps, seed, demo.learning_rate
        ),
        method=method,
        alpha=alpha,
        temperature=demo.temperature,
        teacher_model_name_or_path=teacher,
        plot_tradeoff=False,
    )
    start = time.perf_counter()
    trainer = DetectionKDTrainer(
        model=build_model("student", seed, demo.student_width, demo.student_d_model, student_backbone(demo)),
        args=config,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        processing_class=processor(demo.image_size),
        unlabelled_dataset=unlabelled,
    )
    trainer.remove_callback(PrinterCallback)  # one line per run below, not every log
    trainer.train()
    wall = time.perf_counter() - start
    metrics = trainer.evaluate(splits[demo.evaluate_on])
    print(f"{run:>6} seed {seed}: mAP {100 * metrics['eval_map']:.1f} ({wall:.0f} s)", flush=True)
    pis = [row["pi_distill"] for row in trainer.state.log_history if "pi_distill" in row]
    return {
        **per_step_summary([trainer.step_trace.to_dict()]),
        "run": run,
        "seed": seed,
        "method": method,
        "alpha": alpha if method == "fixed" else None,
        "wall_seconds": wall,
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "unlabelled_images": 0 if unlabelled is None else len(unlabelled),
        **_maps(metrics),
        "final_pi_distill": pis[-1] if pis and method != "fixed" else None,
        "mean_pi_distill": sum(pis) / len(pis) if pis and method != "fixed" else None,
        "vertex_share": vertex_share(trainer.step_trace.to_dict()) if method != "fixed" else None,
        "log_history": trainer.state.log_history,
        "step_trace": trainer.step_trace.to_dict(),
    }


def summarise(results: list[dict[str, Any]], teacher_map: float) -> list[dict[str, Any]]:
    """Per run: mAP over the seeds (mean, std, each seed), as a share of the teacher's, the paired differences
    to no-KD and to fixed alpha (mean and, with two seeds or more, SE), and the per-step figures pooled over
    the seeds."""
    by_run = runs_by_seed(results)
    rows = []
    for run, seeds in by_run.items():
        maps = [seeds[s]["map"] for s in sorted(seeds)]
        row: dict[str, Any] = {
            "run": run,
            "seeds": sorted(seeds),
            "map": maps,
            "map_mean": statistics.fmean(maps),
            "map_std": statistics.stdev(maps) if len(maps) > 1 else None,
            "share_of_teacher": statistics.fmean(maps) / teacher_map if teacher_map > 0 else None,
            "map_50_mean": statistics.fmean(seeds[s]["map_50"] for s in seeds),
            "map_75_mean": statistics.fmean(seeds[s]["map_75"] for s in seeds),
            "wall_seconds_mean": statistics.fmean(seeds[s]["wall_seconds"] for s in seeds),
            "mean_pi_distill": None,
            **per_step_summary([seeds[s]["step_trace"] for s in sorted(seeds)]),
        }
        pis = [seeds[s]["mean_pi_distill"] for s in seeds if seeds[s]["mean_pi_distill"] is not None]
        if pis:
            row["mean_pi_distill"] = statistics.fmean(pis)
        # from the per-step traces (runs recorded before the share was stored have them too)
        dynamic = all(seeds[s]["method"] != "fixed" for s in seeds)
        vertices = [vertex_share(seeds[s]["step_trace"]) for s in sorted(seeds)] if dynamic else [None]
        row["vertex_share"] = statistics.fmean(vertices) if None not in vertices else None
        add_paired_differences(row, run, by_run, "map")
        rows.append(row)
    return rows


def format_table(teacher: dict[str, Any], rows: list[dict[str, Any]], demo: DetectionDemoArguments) -> str:
    pp, pct = signed_points, percent
    counts = {len(r["seeds"]) for r in rows}
    several = len(counts) > 1  # (``row_seeds``) each row's count with its mean; else one count in the header
    over = "each row's seeds (n)" if several else f"{max(counts, default=0)} seeds"
    teacher_time = f"{teacher['wall_seconds']:.0f}"
    if teacher.get("cached"):  # the time of the run that trained it, when it was recorded
        trained = teacher.get("train_seconds")
        teacher_time = "cached" if trained is None else f"{trained:.0f} (cached)"
    lines = [
        f"| model | {demo.evaluate_on} mAP, mean +- std over {over} | each seed | share of teacher | vs no-KD "
        "(paired) | vs fixed (paired) | mAP50 / mAP75 | wall time (s) | mean pi_distill | steps at a vertex | steps "
        "in conflict (all / last quarter) | median applied weight distill / task | median step-to-step change "
        "of the distill weight |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| teacher RT-DETR (d_model {demo.teacher_d_model}, 10 queries) | {100 * teacher['map']:.1f} | - | - | - | "
        f"- | {100 * teacher['map_50']:.1f} / {100 * teacher['map_75']:.1f} | {teacher_time} | - | - | - | - | - |",
    ]

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    for r in rows:
        spread = "" if r["map_std"] is None else f" +- {100 * r['map_std']:.1f}"
        if several:
            spread += f" (n = {len(r['seeds'])})"
        each = ", ".join(f"{100 * v:.1f}" for v in r["map"])
        conflict = (
            "-"
            if r["conflict_rate"] is None
            else f"{pct(r['conflict_rate'])} / {pct(r['conflict_rate_last_quarter'])}"
        )
        weights = f"{number(r['median_weight_distill'])} / {number(r.get('median_weight_task'))}"
        lines.append(
            f"| student RT-DETR (d_model {demo.student_d_model}, 8 queries), {r['run']} | "
            f"{100 * r['map_mean']:.1f}{spread} | {each} | {pct(r['share_of_teacher'])} | "
            f"{pp(r['diff_to_no_kd'], r['diff_to_no_kd_se'])} | {pp(r['diff_to_fixed'], r['diff_to_fixed_se'])} | "
            f"{100 * r['map_50_mean']:.1f} / {100 * r['map_75_mean']:.1f} | {r['wall_seconds_mean']:.0f} | "
            f"{number(r['mean_pi_distill'])} | {pct(r.get('vertex_share'))} | {conflict} | {weights} | "
            f"{number(r.get('median_weight_change'))} |"
        )
    return "\n".join(lines)


def load_splits(demo: DetectionDemoArguments) -> dict[str, Any]:
    """The generated train / validation splits (a pure function of the arguments), prepared for RT-DETR."""
    raw = dict(
        load_shapes_splits(demo.train_size, demo.validation_size, demo.image_size, demo.max_objects, seed=0)
    )
    if demo.test_size:  # a third seed; image ids after the validation images
        raw["test"] = generate_shapes(
            demo.test_size, demo.image_size, demo.max_objects, 20_000, demo.train_size + demo.validation_size
        )
    if demo.teacher_train_size and demo.teacher_train_size != demo.train_size:
        # the same generator and seed: the students' images are the first train_size of the teacher's
        raw["teacher_train"] = generate_shapes(
            demo.teacher_train_size, demo.image_size, demo.max_objects, seed=0
        )
    transform = DetectionTransform(processor(demo.image_size), len(SHAPE_CLASSES))
    splits = {name: split.with_transform(transform) for name, split in raw.items()}
    if demo.unlabelled_size:  # the teacher's images after the students' ones, their labels removed
        teacher_images = raw.get("teacher_train", raw["train"])
        images = teacher_images.select(range(demo.train_size, demo.train_size + demo.unlabelled_size))
        splits["unlabelled"] = images.remove_columns(["objects"]).with_transform(
            UnlabelledImageTransform(processor(demo.image_size))
        )
    return splits


def _student_in_worker(run: str, seed: int, demo: DetectionDemoArguments, teacher: str, threads: int) -> dict:
    """A student run in a worker process: its own threads, its own copy of the (regenerated) data."""
    torch.set_num_threads(threads)
    hf_logging.set_verbosity_warning()
    return train_student(run, demo, load_splits(demo), teacher, seed)


def train_students(
    demo: DetectionDemoArguments, splits: dict[str, Any], teacher: str, weights: dict[str, str]
) -> list[dict[str, Any]]:
    """Every (seed, run) pair, reused from its file (when trained against these ``weights``: see
    ``model_weights``) or trained (``paired_seeds.train_jobs``)."""
    seeds = demo.seeds_of_run()
    return train_jobs(
        # seed by seed, each in the order of --runs
        [(run, seed) for seed in sorted(set().union(*seeds.values())) for run in seeds if seed in seeds[run]],
        load=lambda run, seed: finished_run(demo, run, seed, weights),
        save=lambda result: record_run(demo, result, weights),
        workers=demo.workers,
        train_here=lambda run, seed: train_student(run, demo, splits, teacher, seed),
        worker=_student_in_worker,
        worker_args=(demo, teacher),
    )


#: DetectionDemoArguments fields that do not change a run's result (which runs, where, how many at once)
NOT_RUN_SETTINGS = (
    "output_dir",
    "runs",
    "seed",
    "seeds",
    "row_seeds",
    "workers",
    "retrain_teacher",
    "runs_dir",
    "models_dir",
)


UNLABELLED_SETTINGS = ("unlabelled_size", "unlabelled_batch_size")


def unread_settings(demo: DetectionDemoArguments, run: str) -> set[str]:
    """Fields a run does not read: the alpha-0 runs do not read the token projector, no KD reads no unlabelled
    images, and without unlabelled images their batch size is unread. Left out of its settings, so that a run
    recorded before such a field existed, or under another value of it, is still reused."""
    unread = set(NOT_RUN_SETTINGS)
    if run in WITHOUT_KD:  # no distillation term: neither the teacher's weights nor a token projector count
        unread |= {"token_projector", "teacher_weights"}
    if run == "no_kd":
        unread |= set(UNLABELLED_SETTINGS)
    if not demo.unlabelled_size:
        unread |= set(UNLABELLED_SETTINGS)
    return unread


def run_settings(
    demo: DetectionDemoArguments, run: str, weights: dict[str, str] | None = None
) -> dict[str, Any]:
    """The settings a run's result depends on, with the fingerprints of the teacher and backbone it is trained
    against (``model_weights``); its file is reused only under the same."""
    unread = unread_settings(demo, run)
    return {k: v for k, v in {**asdict(demo), **(weights or {})}.items() if k not in unread}


def _run_file(demo: DetectionDemoArguments, run: str, seed: int) -> Path:
    if demo.runs_dir is not None:
        return Path(demo.runs_dir) / f"{run}_seed{seed}.json.gz"
    return Path(demo.output_dir) / "runs" / f"{run}_seed{seed}.json"


def finished_run(
    demo: DetectionDemoArguments, run: str, seed: int, weights: dict[str, str] | None = None
) -> dict[str, Any] | None:
    """A run's recorded result, when it was trained with these settings and against these weights (else None:
    it is trained again)."""
    settings = run_settings(demo, run, weights)
    return load_run(_run_file(demo, run, seed), settings, unread_settings(demo, run))


def record_run(
    demo: DetectionDemoArguments, result: dict[str, Any], weights: dict[str, str] | None = None
) -> dict[str, Any]:
    settings = run_settings(demo, result["run"], weights)
    return save_run(_run_file(demo, result["run"], result["seed"]), settings, result)


def model_weights(demo: DetectionDemoArguments, teacher_folder: str) -> dict[str, str]:
    """The fingerprints (``weights_fingerprint``) of the teacher and, when pretrained, the students' backbone."""
    weights = {"teacher_weights": weights_fingerprint(teacher_folder)}
    if (backbone := student_backbone(demo)) is not None:
        weights["backbone_weights"] = weights_fingerprint(backbone)
    return weights


def run_demo(demo: DetectionDemoArguments) -> dict[str, Any]:
    output_dir = Path(demo.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    splits = load_splits(demo)
    teacher = train_teacher(demo, splits)
    if demo.student_backbone == "pretrained":
        backbone = pretrain_backbone(
            Path(student_backbone(demo)),
            lambda id2label: build_model(
                "student", BACKBONE_SEED, demo.student_width, demo.student_d_model, id2label=id2label
            ),
            processor(demo.image_size),
            {"width": demo.student_width, "d_model": demo.student_d_model, "max_objects": demo.max_objects},
            demo.backbone_pretrain_images,
            demo.backbone_pretrain_steps,
            demo.batch_size,
            demo.teacher_learning_rate,
        )
        state = "cached" if backbone["cached"] else "trained"
        print(
            f"student backbone: class-agnostic mAP {100 * backbone['objectness_map']:.1f} on held-out images "
            f"({state}, {backbone['train_seconds']:.0f} s)",
            flush=True,
        )
    weights = model_weights(demo, teacher["folder"])
    teacher["weights"] = weights["teacher_weights"]
    results = train_students(demo, splits, teacher["folder"], weights)
    rows = summarise(results, teacher["map"])
    table = format_table(teacher, rows, demo)
    dto = plotted_runs(results, demo.seed)
    histories = {f"{r['run']} (seed {r['seed']})": r["log_history"] for r in dto}
    traces = {f"{r['run']} (seed {r['seed']})": r["step_trace"] for r in dto}
    plot = (
        plot_tradeoff(histories, output_dir / "tradeoff.png", traces=traces)
        if histories
        else "no plot (no DTO-KD run)"
    )
    return write_summary(output_dir, asdict(demo), teacher, results, table, plot, start, {"rows": rows})


def main(argv: list[str] | None = None) -> None:
    (demo,) = HfArgumentParser((DetectionDemoArguments,)).parse_args_into_dataclasses(args=argv)
    hf_logging.set_verbosity_warning()
    logging.basicConfig(level=logging.WARNING)
    run_demo(demo)


if __name__ == "__main__":
    main()
