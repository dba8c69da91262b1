"""Every trade-off method on the embedded digits task: same student, teacher, data and budget.

The regime (chosen so that distillation matters at all, see ``docs/compare_methods.md``):
scikit-learn's 1,797 digits in 5 stratified folds. For fold ``f`` a ResNet teacher (24 px) is
trained on the four other folds with all their labels; the ViT student (32 px) sees only a
*labelled subset* of those images (``labelled_per_class`` per class) and is tested on fold ``f``.
Every image is a test image exactly once per seed, so each method is scored on all 1,797 digits.

Runs are paired: a (fold, seed) fixes the labelled subset, the student's initialisation and the
data order for every method. The table reports mean +- std top-1 over the pairs, the paired
difference to fixed alpha = 0.5 with its standard error (std of the paired differences /
sqrt(pairs)), the first evaluation step at which the method's mean accuracy curve reaches fixed
alpha = 0.5's final mean accuracy, and wall time per step. Every method gets the same learning rate,
schedule and steps; none is tuned (DOT's SGD form takes the SGD learning rate of its reference).

Writes ``<results_dir>/compare_methods.{json,md,png}``. ``--help`` lists the flags; a smoke run:
``python benchmarks/compare_methods.py --folds 2 --max_steps 4 --eval_steps 2 --teacher_steps 4``.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import platform
import re
import statistics
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from transformers import TrainerCallback

from hf_dtokd.balancing import METHOD_REGISTRY
from hf_dtokd.demos.paired_seeds import parse_row_seeds

RESULTS = Path(__file__).parent / "results"
BASELINE = "fixed_0.5"
ROWS = (
    "no_kd",
    "fixed_0.1",
    "fixed_0.5",
    "fixed_0.9",
    "dto",
    "dto_amortized",
    "mgda",
    "pcgrad",
    "cagrad",
    "upgrad",
    "imtl_g",
    "aligned_mtl",
    "dualproj",
    "uncertainty",
    "dot",
    "dot_adamw",
)
#: Other distillation signals (opt-in with --rows): feature KD through each projector (FeatureKDTrainer,
#: grouped into DTO-KD's two objectives) and DeiT's distillation token (DeiTTokenTrainer, a two-head DeiT
#: student of the same size), each with DTO-KD and with fixed alpha 0.5 (DeiT's own recipe for the token).
SIGNALS = ("feature_linear", "feature_vkd", "feature_mokd", "deit_hard", "deit_soft")
SIGNAL_ROWS = tuple(f"{signal}_{method}" for signal in SIGNALS[:4] for method in ("dto", "fixed_0.5"))
#: The paper's regime (``--regime paper``): every training image labelled, a CNN teacher and a ViT student,
#: DeiT-style augmentation; logit KD and VkD feature KD (grouped into one distillation objective), each with
#: fixed alpha in {0.1, 0.5, 0.9, 1.0}, DTO-KD (exact, at the parameters; for logit KD also at the
#: representation), its amortized form and DOT (its AdamW form: every other row trains with AdamW).
#: ``*_dto_shared``: the Gram over the parameters both losses reach (VkD's projector and DeiT's two heads are
#: reached by one loss each; with logit KD every parameter is reached by both, so ``dto_shared`` is ``dto``).
#: ``deit_soft_*``: DeiT's distillation token with soft distillation (a two-head DeiT student of the ViT's shape).
PAPER_METHODS = ("fixed_0.1", "fixed_0.5", "fixed_0.9", "fixed_1.0", "dto", "dto_amortized", "dot_adamw")
PAPER_ROWS = (
    "no_kd",
    *PAPER_METHODS[:5],
    "dto_representation",
    *PAPER_METHODS[5:],
    "dot",
    *(f"feature_vkd_{method}" for method in PAPER_METHODS),
    "feature_vkd_dto_shared",
    "deit_soft_fixed_0.5",
    "deit_soft_dto",
    "deit_soft_dto_shared",
)
ALL_ROWS = tuple(dict.fromkeys(ROWS + SIGNAL_ROWS + PAPER_ROWS))
#: DOT with another momentum gap (opt-in with --rows, e.g. ``dot_adamw_delta0`` or ``feature_vkd_dot_delta0.02``):
#: the sweep that explains the AdamW form's rows
DOT_DELTA_ROW = re.compile(r"^(dot|dot_adamw)(?:_beta([0-9]*\.?[0-9]+))?_delta([0-9]*\.?[0-9]+)$")
#: DOT's AdamW form with the branches' squares in its second moment (``dot_adamw_branches``, optionally with
#: another gap: ``dot_adamw_branches_delta0``)
DOT_BRANCHES_ROW = re.compile(r"^dot_adamw_branches(?:_delta([0-9]*\.?[0-9]+))?$")
#: DOT's AdamW form with AdamW's bias correction on both first moments (``dot_adamw_shared_bias``)
DOT_SHARED_BIAS_ROW = re.compile(r"^dot_adamw_shared_bias(?:_delta([0-9]*\.?[0-9]+))?$")
#: DOT's SGD form at another learning rate (``dot_lr0.1``; paper regime): the validation pilot that picks it
DOT_LR_ROW = re.compile(r"^dot_lr([0-9]*\.?[0-9]+)$")


@dataclass
class CompareArguments:
    regime: str = field(
        default="transfer",
        metadata={
            "help": "'transfer': a ResNet student, a labelled subset and the unlabelled pool (the earlier "
            "regime); 'paper': DTO-KD's setting scaled to digits: every training image labelled, a ViT student "
            "from a CNN teacher, timm's RandAugment and Mixup / CutMix, a validation split carved from the "
            "training folds (curves are read on it; the test fold is read once, at the end).",
            "choices": ["transfer", "paper"],
        },
    )
    rows: list[str] | None = field(
        default=None,
        metadata={"help": f"Rows among {ALL_ROWS} (default: the regime's: {ROWS} or {PAPER_ROWS})."},
    )
    evaluate_on: str = field(
        default="test",
        metadata={
            "help": "paper regime: 'test' reads the test fold once per run; 'validation' scores the final "
            "student on the validation split instead (the pilots that fix the hyper-parameters).",
            "choices": ["test", "validation"],
        },
    )
    validation_fraction: float = field(
        default=0.15,
        metadata={"help": "paper regime: share of each fold's training pool held out for validation."},
    )
    rand_augment: str | None = field(
        default="rand-m9-mstd0.5-inc1",
        metadata={"help": "paper regime: timm RandAugment policy at 32 px ('none': no RandAugment)."},
    )
    mixup_alpha: float = field(default=0.8, metadata={"help": "paper regime: timm Mixup alpha."})
    cutmix_alpha: float = field(default=1.0, metadata={"help": "paper regime: timm CutMix alpha."})
    mixup_prob: float = field(
        default=1.0, metadata={"help": "paper regime: probability of Mixup / CutMix per batch (0: none)."}
    )
    label_smoothing: float = field(default=0.1, metadata={"help": "paper regime: Mixup's label smoothing."})
    results_name: str = field(
        default="compare_methods",
        metadata={"help": "Base name of the results files (the validation pilots use their own names)."},
    )
    gram_parameters: str = field(
        default="all",
        metadata={"help": "Feature-KD rows with a Gram method: 'all' or 'student' (see DTOKDConfig)."},
    )
    folds: int = field(default=5, metadata={"help": "Stratified folds of the 1,797 digits (>= 2)."})
    seeds: int = field(default=3, metadata={"help": "Seeds per fold (subset, init, data order)."})
    row_seeds: list[str] = field(
        default_factory=list,
        metadata={
            "help": "paper regime: more seeds per fold for named rows, as ROW=N with N >= --seeds (e.g. dot=7), where "
            "a row's paired SE needs more pairs than the others. Such a row's figures are over every pair it shares "
            "with its best fixed alpha (chosen on the pairs every row has): give that fixed row as many."
        },
    )
    only_folds: list[int] | None = field(
        default=None, metadata={"help": "Run these folds only (the validation pilots); default: all."}
    )
    labelled_per_class: int = field(default=20, metadata={"help": "Labelled training images per class."})
    unlabelled_pool: bool = field(
        default=True,
        metadata={
            "help": "KD runs also see the rest of the fold's pool, unlabelled (label -100: distillation loss "
            "only), the teacher labelling a transfer set; False: every run sees the labelled subset only. "
            "no_kd always trains on the labelled subset (an unlabelled image carries no signal without a teacher)."
        },
    )
    max_steps: int = field(default=600, metadata={"help": "Optimizer steps of every student run."})
    batch_size: int = field(default=32, metadata={"help": "Student batch size."})
    learning_rate: float = field(
        default=2e-3, metadata={"help": "AdamW learning rate of every run but DOT-SGD."}
    )
    sgd_learning_rate: float = field(default=0.05, metadata={"help": "Learning rate of DOT's SGD form."})
    temperature: float = field(default=4.0, metadata={"help": "Distillation temperature of every KD run."})
    ema_decay: float = field(
        default=0.0,
        metadata={
            "help": "Paper regime: evaluate and score a moving average of the student's weights (DTOKDConfig's "
            "ema_decay, with timm's warm-up; 0 = off): the curve and the test top-1 are the average's."
        },
    )
    eval_steps: int = field(default=50, metadata={"help": "Evaluate the student every this many steps."})
    teacher_steps: int = field(default=300, metadata={"help": "Optimizer steps of each fold's teacher."})
    student_family: str = field(
        default="resnet",
        metadata={
            "help": "'resnet': a ResNet of stage widths width/4, width/2, width (one basic block each); 'vit': a "
            "ViT of student_layers x width, patch student_patch (the DeiT-token rows need it).",
            "choices": ["resnet", "vit"],
        },
    )
    student_width: int = field(
        default=32, metadata={"help": "Student width (ViT hidden size, ResNet last stage)."}
    )
    student_layers: int = field(default=2, metadata={"help": "ViT student depth."})
    student_patch: int = field(default=8, metadata={"help": "ViT student patch size (32 px images)."})
    workers: int = field(default=2, metadata={"help": "Runs in parallel (one torch thread each)."})
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Teachers and run folders (default: outputs/compare_methods[_paper])."},
    )
    teachers_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where each fold's teacher is kept (teacher_fold<f>; trained there when missing); default: "
            "<output_dir>. Each run records its teacher's weights fingerprint and is paired only with runs against "
            "the same teacher; a benchmark longer than a session commits its teachers here (the same settings "
            "train other weights on another machine)."
        },
    )
    runs_dir: str | None = field(
        default=None,
        metadata={
            "help": "Keep each finished run in its own gzipped JSON file here and resume from them (a folder under "
            "benchmarks/results can be committed run by run, so a benchmark longer than a session goes on where it "
            "stopped); default: <output_dir>/runs.jsonl."
        },
    )
    results_dir: str | None = field(
        default=None,
        metadata={
            "help": f"Where the json, md and png go (default: {RESULTS} or {RESULTS / 'paper_regime'})."
        },
    )
    finished_only: bool = field(
        default=False,
        metadata={
            "help": "Train nothing: write the table from the runs already recorded, over the fold / seed pairs that "
            "every row has finished (a benchmark in progress; the table says how many pairs of how many). Give it "
            "its own --results_name so that the full table is not overwritten."
        },
    )
    stop_file: str | None = field(
        default=None,
        metadata={
            "help": "When this file exists, the runs in flight (one per worker) finish and are recorded, no other run "
            "starts and no table is written (a session's end: the same command goes on from the recorded runs)."
        },
    )
    pilots: list[str] | None = field(
        default=None,
        metadata={
            "help": "Results files (json) of the validation pilots that chose this run's settings (budget, learning "
            "rates), recorded in the report with each row's validation top-1 and last-quarter gain; default: every "
            "json in <results_dir>/selection. Read only when scoring the test folds."
        },
    )

    def __post_init__(self) -> None:
        if self.rand_augment in ("none", ""):
            self.rand_augment = None
        if self.rows is None:
            self.rows = list(PAPER_ROWS if self.regime == "paper" else ROWS)
        paper = self.regime == "paper"
        if self.output_dir is None:
            self.output_dir = "outputs/compare_methods_paper" if paper else "outputs/compare_methods"
        if self.results_dir is None:
            self.results_dir = str(RESULTS / "paper_regime" if paper else RESULTS)
        if self.regime == "paper" and self.student_family != "vit":
            raise ValueError("the paper regime has a ViT student: pass --student_family vit")
        if self.ema_decay and self.regime != "paper":
            raise ValueError("ema_decay is read by the paper regime only (--regime paper); leave it at 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(
                f"ema_decay must lie in [0, 1) (0 = no moving average; e.g. 0.999), got {self.ema_decay}"
            )
        unknown = [
            r
            for r in self.rows
            if r not in ALL_ROWS
            and not any(
                p.match(split_row(r)[1])
                for p in (DOT_DELTA_ROW, DOT_BRANCHES_ROW, DOT_SHARED_BIAS_ROW, DOT_LR_ROW)
            )
        ]
        if unknown:
            raise ValueError(f"unknown rows {unknown}; valid values: {', '.join(ALL_ROWS)}")
        if self.regime == "transfer" and BASELINE not in self.rows:
            raise ValueError(f"rows must include the baseline {BASELINE!r}")
        if self.regime == "paper":
            # each row pairs with the best fixed alpha of its own signal, else with logit KD's (paper_summary):
            # refused here, before hours of training, rather than failing when the table is written
            fixed_signals = {split_row(r)[0] for r in self.rows if split_row(r)[1].startswith("fixed_")}
            unpaired = [r for r in self.rows if not {split_row(r)[0], "logits"} & fixed_signals]
            if unpaired:
                raise ValueError(
                    f"rows {unpaired} have no fixed-alpha row to pair with (the paired differences are to the best "
                    "fixed alpha of the row's signal, else of logit KD): add one, e.g. "
                    + " or ".join(
                        sorted({f"{split_row(r)[0]}_fixed_0.5".removeprefix("logits_") for r in unpaired})
                    )
                    + (" or fixed_0.5" if any(split_row(r)[0] != "logits" for r in unpaired) else "")
                )
        if self.only_folds is not None and not all(0 <= f < self.folds for f in self.only_folds):
            raise ValueError(f"only_folds must be fold indices in [0, {self.folds}), got {self.only_folds}")
        if self.folds < 2 or self.seeds < 1 or self.labelled_per_class < 1:
            raise ValueError("folds must be >= 2, seeds and labelled_per_class >= 1")
        if self.student_family != "vit" and any(split_row(r)[0].startswith("deit_") for r in self.rows):
            raise ValueError("the DeiT-token rows need a ViT student: pass --student_family vit")
        if self.max_steps < 1 or self.eval_steps < 1 or self.teacher_steps < 1:
            raise ValueError("max_steps, eval_steps and teacher_steps must be >= 1")
        counts = self.seeds_of_row()  # validates row_seeds
        if self.row_seeds and self.regime != "paper":
            raise ValueError("row_seeds is for the paper regime (--regime paper)")
        fewer = {row: n for row, n in counts.items() if n < self.seeds}
        if fewer:
            raise ValueError(
                f"row_seeds gives {fewer} fewer seeds than --seeds {self.seeds} (every row runs --seeds seeds per "
                "fold; row_seeds adds more): raise them or drop the entries"
            )

    def seeds_of_row(self) -> dict[str, int]:
        """Seeds per fold of each row: ``seeds``, or the count ``row_seeds`` names for it."""
        counts = parse_row_seeds(self.row_seeds, self.rows, flag="rows")
        return {row: counts.get(row, self.seeds) for row in self.rows}


# ---------------------------------------------------------------------------------------------- data
@cache
def fold_data(folds: int, fold: int) -> tuple[Any, Any, list[str]]:
    """(pool, test) of one fold, both with the raw ``image`` / ``label`` columns."""
    from datasets import concatenate_datasets
    from sklearn.model_selection import StratifiedKFold

    from hf_dtokd.data import load_digits_splits

    splits = load_digits_splits(seed=0)
    everything = concatenate_datasets([splits["train"], splits["test"]])
    labels = np.asarray(everything["label"])
    folds_iter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0).split(labels, labels)
    pool_idx, test_idx = list(folds_iter)[fold]
    names = everything.features["label"].names
    return everything.select(pool_idx), everything.select(test_idx), names


@cache
def processed(folds: int, fold: int, which: str, size: int) -> Any:
    from hf_dtokd.data import preprocess_images
    from hf_dtokd.demos.digits import student_processor, teacher_processor

    pool, test, _ = fold_data(folds, fold)
    processor = student_processor() if size == 32 else teacher_processor()
    return preprocess_images(pool if which == "pool" else test, processor)


@cache
def paper_split(folds: int, fold: int, fraction: float) -> tuple[Any, Any]:
    """(train, validation) of the fold's pool, stratified, the same for every seed and row."""
    pool, _, _ = fold_data(folds, fold)
    parts = pool.train_test_split(test_size=fraction, seed=fold, stratify_by_column="label")
    return parts["train"], parts["test"]


@cache
def paper_processed(folds: int, fold: int, fraction: float, which: str, size: int) -> Any:
    """The paper regime's clean (unaugmented) ``train`` / ``validation`` / ``test`` at ``size`` px."""
    from hf_dtokd.data import preprocess_images
    from hf_dtokd.demos.digits import student_processor, teacher_processor

    train, validation = paper_split(folds, fold, fraction)
    dataset = {"train": train, "validation": validation, "test": fold_data(folds, fold)[1]}[which]
    return preprocess_images(dataset, student_processor() if size == 32 else teacher_processor())


def training_set(dataset: Any, per_class: int, seed: int, unlabelled_pool: bool) -> Any:
    """The labelled subset alone, or the whole pool with every other image's label set to -100."""
    from hf_dtokd.data import transfer_set

    return transfer_set(dataset, per_class, seed, unlabelled_pool)


# ---------------------------------------------------------------------------------------------- runs
def teacher_dir(args: CompareArguments, fold: int) -> Path:
    return Path(args.teachers_dir or args.output_dir) / f"teacher_fold{fold}"


def train_teacher(args: CompareArguments, fold: int) -> float:
    from transformers import DefaultDataCollator, Trainer, TrainingArguments

    from hf_dtokd.demos.digits import build_teacher, teacher_processor
    from hf_dtokd.tasks.classification.metrics import classification_metrics

    folder = teacher_dir(args, fold)
    metrics_file = folder / "metrics.json"
    if metrics_file.is_file() and json.loads(metrics_file.read_text()).get("steps") == args.teacher_steps:
        return json.loads(metrics_file.read_text())["top1"]
    _, _, names = fold_data(args.folds, fold)
    training = TrainingArguments(
        output_dir=str(folder / "run"),
        use_cpu=True,
        per_device_train_batch_size=64,
        max_steps=args.teacher_steps,
        learning_rate=3e-3,
        lr_scheduler_type="cosine",
        warmup_steps=int(0.05 * args.teacher_steps),
        weight_decay=0.05,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=1234,
        data_seed=1234,
    )
    if args.regime == "paper":  # trained on the fold's training part: the validation split stays unseen
        train = paper_processed(args.folds, fold, args.validation_fraction, "train", 24)
        test = paper_processed(args.folds, fold, args.validation_fraction, "test", 24)
    else:
        train, test = processed(args.folds, fold, "pool", 24), processed(args.folds, fold, "test", 24)
    trainer = Trainer(
        model=build_teacher(names),
        args=training,
        train_dataset=train,
        eval_dataset=test,
        data_collator=DefaultDataCollator(),
        compute_metrics=classification_metrics,
    )
    trainer.train()
    top1 = trainer.evaluate()["eval_top1"]
    trainer.model.save_pretrained(folder)
    teacher_processor().save_pretrained(folder)
    metrics_file.write_text(json.dumps({"top1": top1, "steps": args.teacher_steps}))
    return top1


def build_student(args: CompareArguments, seed: int, names: list[str], two_head: bool = False) -> Any:
    """The student; ``two_head``: a DeiT of the ViT's shape with a distillation token and head."""
    import torch
    from transformers import (
        DeiTConfig,
        DeiTForImageClassificationWithTeacher,
        ViTConfig,
        ViTForImageClassification,
    )

    if args.student_family == "resnet":
        from hf_dtokd.demos.digits import build_resnet_student

        return build_resnet_student(seed, names, args.student_width)
    torch.manual_seed(seed)
    config = (DeiTConfig if two_head else ViTConfig)(
        image_size=32,
        patch_size=args.student_patch,
        hidden_size=args.student_width,
        num_hidden_layers=args.student_layers,
        num_attention_heads=4,
        intermediate_size=2 * args.student_width,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    return DeiTForImageClassificationWithTeacher(config) if two_head else ViTForImageClassification(config)


def split_row(row: str) -> tuple[str, str]:
    """``("logits", row)`` for the method rows, ``(signal, method)`` for SIGNAL_ROWS."""
    for signal in SIGNALS:
        if row.startswith(signal + "_"):
            return signal, row[len(signal) + 1 :]
    return "logits", row


def parse_method(method_row: str) -> tuple[str, float, dict[str, Any]]:
    """``(method, alpha, extra config)`` of a row's method part (``fixed_0.9``, ``dto_representation``...)."""
    if method_row.startswith("fixed_"):
        return "fixed", float(method_row.split("_")[1]), {}
    if method_row == "dto_representation":
        return "dto", 0.5, {"gradient_placement": "representation"}
    if method_row == "dto_shared":
        return "dto", 0.5, {"gram_parameters": "shared"}
    lr = DOT_LR_ROW.match(method_row)
    if lr:
        return "dot", 0.5, {"learning_rate": float(lr.group(1))}
    branches = DOT_BRANCHES_ROW.match(method_row)
    if branches:
        gap = {} if branches.group(1) is None else {"dot_delta": float(branches.group(1))}
        return "dot_adamw", 0.5, {"dot_second_moment": "branches", **gap}
    shared_bias = DOT_SHARED_BIAS_ROW.match(method_row)
    if shared_bias:
        gap = {} if shared_bias.group(1) is None else {"dot_delta": float(shared_bias.group(1))}
        return "dot_adamw", 0.5, {"dot_bias_correction": "shared", **gap}
    dot = DOT_DELTA_ROW.match(method_row)
    if dot:
        # ``_betaB``: another base momentum (beta1 of the AdamW form), e.g. one momentum at the distillation
        # branch's 0.975 (``dot_adamw_beta0.975_delta0``: AdamW with beta1 0.975 on the fixed-alpha loss)
        extra = {} if dot.group(2) is None else {"dot_momentum": float(dot.group(2))}
        return dot.group(1), 0.5, {**extra, "dot_delta": float(dot.group(3))}
    return method_row, 0.5, {}


def is_experiment(row: str) -> bool:
    """Whether a row's method is an experiment rather than a method to compare against (its balancer declares
    why in ``experiment``): such rows get their own table, outside the comparison."""
    method = METHOD_REGISTRY.get(parse_method(split_row(row)[1])[0])
    return method is not None and bool(method.experiment)


#: the largest paired standard error (top-1, as a fraction) a compared row may have for the table to resolve
#: differences of the size the paper reports (0.8-1.4 pp)
RESOLUTION_SE = 0.005


def per_step_figures(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Per optimizer step (logging_steps=1): cosine of the distillation and task gradients, the raw-loss
    weights applied, pi, and the losses."""
    steps = [r for r in history if "weight_task" in r]
    return {
        "step": [r["step"] for r in steps],
        "grad_cos": [r.get("grad_cos") for r in steps],
        "weight_distill": [r["weight_distill"] for r in steps],
        "weight_task": [r["weight_task"] for r in steps],
        "pi_distill": [r.get("pi_distill") for r in steps],
        "distill_loss": [r.get("distill_loss") for r in steps],
        "task_loss": [r.get("task_loss") for r in steps],
    }


def run_paper(args: CompareArguments, row: str, fold: int, seed: int) -> dict[str, Any]:
    """One run of the paper regime (see the module and ``--regime``)."""
    import torch
    from transformers import DefaultDataCollator
    from transformers.utils import logging as hf_logging

    from hf_dtokd import DeiTTokenTrainer, DTOKDConfig, DTOKDTrainer, FeatureKDTrainer
    from hf_dtokd.data import MixupCollator, augmented_images
    from hf_dtokd.demos.digits import student_processor
    from hf_dtokd.tasks.classification.metrics import classification_metrics

    hf_logging.set_verbosity_error()
    run_seed = 1000 * fold + seed
    _, _, names = fold_data(args.folds, fold)
    train_raw, _ = paper_split(args.folds, fold, args.validation_fraction)
    train = augmented_images(train_raw, student_processor(), args.rand_augment, augment_size=32)
    validation = paper_processed(args.folds, fold, args.validation_fraction, "validation", 32)
    final = paper_processed(args.folds, fold, args.validation_fraction, args.evaluate_on, 32)
    mixing = args.mixup_prob > 0
    collator = (
        MixupCollator(
            len(names),
            mixup_alpha=args.mixup_alpha,
            cutmix_alpha=args.cutmix_alpha,
            label_smoothing=args.label_smoothing,
            prob=args.mixup_prob,
        )
        if mixing
        else DefaultDataCollator()
    )
    signal, method_row = split_row(row)
    # no_kd: the task loss alone (alpha = 0; the same data, loss and code path as every other row)
    method, alpha, extra = ("fixed", 0.0, {}) if row == "no_kd" else parse_method(method_row)
    if signal == "feature_vkd" and method == "dto":
        extra.setdefault("gram_parameters", args.gram_parameters)
    # DOT's reference SGD form has its own learning rate and weight decay (the transfer regime's)
    learning_rate = extra.pop(
        "learning_rate", args.sgd_learning_rate if method == "dot" else args.learning_rate
    )
    config = DTOKDConfig(
        output_dir=str(Path(args.output_dir) / "runs" / f"{row}_f{fold}_s{seed}"),
        use_cpu=True,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=512,
        max_steps=args.max_steps,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=int(0.05 * args.max_steps),
        weight_decay=5e-4 if method == "dot" else 0.05,
        label_smoothing_factor=0.0 if mixing else args.label_smoothing,
        eval_strategy="steps",
        eval_steps=args.eval_steps,
        logging_steps=1,  # per-step figures
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,  # the augmenting transform reads the raw image column
        seed=run_seed,
        data_seed=run_seed,
        method=method,
        alpha=alpha,
        temperature=args.temperature,
        teacher_model_name_or_path=str(teacher_dir(args, fold)),
        ema_decay=args.ema_decay,
        ema_warmup=args.ema_decay > 0,
        **extra,
    )
    kwargs = dict(
        model=build_student(args, run_seed, names, two_head=signal.startswith("deit_")),
        args=config,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=collator,
        processing_class=student_processor(),
        compute_metrics=classification_metrics,
    )
    if signal == "feature_vkd":
        trainer = FeatureKDTrainer(projector="vkd", **kwargs)
    elif signal.startswith("deit_"):
        trainer = DeiTTokenTrainer(distillation=signal.split("_", 1)[1], **kwargs)
    else:
        trainer = DTOKDTrainer(**kwargs)
    update_size = UpdateSize() if method in ("dot", "dot_adamw") else None
    if update_size is not None:
        trainer.add_callback(update_size)
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    top1 = trainer.evaluate(final, metric_key_prefix="final")["final_top1"]  # the test fold, read once
    history = trainer.state.log_history
    return {
        "row": row,
        "fold": fold,
        "seed": seed,
        "top1": top1,
        "gram_parameters": config.gram_parameters,
        "curve": [(r["step"], r["eval_top1"]) for r in history if "eval_top1" in r],
        "pi": [(r["step"], r["pi_distill"]) for r in history if "pi_distill" in r],
        "per_step": per_step_figures(history),
        "seconds_per_step": wall / args.max_steps,
        "threads": torch.get_num_threads(),
        **({"update_size": update_size.figures} if update_size is not None else {}),
    }


class UpdateSize(TrainerCallback):
    """DOT rows: per optimizer step, the RMS and the largest magnitude of the update direction DOT writes into
    ``.grad`` (its optimizer then steps ``p <- p - lr .grad``). For the AdamW form this is the Adam-normalised
    direction, whose entries AdamW keeps near or below 1; ``dot_delta=0`` is exactly AdamW."""

    def __init__(self) -> None:
        self.figures: dict[str, list[float]] = {"rms": [], "max": []}

    def on_pre_optimizer_step(
        self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
    ) -> None:
        import torch

        grads = [p.grad.detach().reshape(-1).float() for p in model.parameters() if p.grad is not None]
        flat = torch.cat(grads)
        self.figures["rms"].append(flat.pow(2).mean().sqrt().item())
        self.figures["max"].append(flat.abs().max().item())


def per_step_conflict(trainer: Any) -> float | None:
    """Share of optimizer steps whose distillation and task gradients conflict, from the trainer's per-step
    trace (None for runs that do not compute both gradients)."""
    trace = getattr(trainer, "step_trace", None)
    cosines = [c for c in trace.points.get("grad_cos", ([], []))[1] if not math.isnan(c)] if trace else []
    return sum(c < 0 for c in cosines) / len(cosines) if cosines else None


def run_one(args: CompareArguments, row: str, fold: int, seed: int) -> dict[str, Any]:
    """One student run; returns its final top-1, accuracy curve, pi curve and time per step."""
    if args.regime == "paper":
        return run_paper(args, row, fold, seed)
    import torch
    from transformers import DefaultDataCollator, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    from hf_dtokd import DeiTTokenTrainer, DTOKDConfig, DTOKDTrainer, FeatureKDTrainer
    from hf_dtokd.demos.digits import student_processor
    from hf_dtokd.tasks.classification.metrics import classification_metrics

    hf_logging.set_verbosity_error()
    run_seed = 1000 * fold + seed
    _, _, names = fold_data(args.folds, fold)
    train = training_set(
        processed(args.folds, fold, "pool", 32),
        args.labelled_per_class,
        run_seed,
        args.unlabelled_pool and row != "no_kd",
    )
    test = processed(args.folds, fold, "test", 32)
    is_dot_sgd = row == "dot"
    common = dict(
        output_dir=str(Path(args.output_dir) / "runs" / f"{row}_f{fold}_s{seed}"),
        use_cpu=True,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=512,
        max_steps=args.max_steps,
        learning_rate=args.sgd_learning_rate if is_dot_sgd else args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=int(0.05 * args.max_steps),
        weight_decay=5e-4 if is_dot_sgd else 0.05,
        eval_strategy="steps",
        eval_steps=args.eval_steps,
        logging_steps=args.eval_steps,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=run_seed,
        data_seed=run_seed,
    )
    signal, method_row = split_row(row)
    student = build_student(args, run_seed, names, two_head=signal.startswith("deit_"))
    kwargs = dict(
        model=student,
        train_dataset=train,
        eval_dataset=test,
        data_collator=DefaultDataCollator(),
        compute_metrics=classification_metrics,
    )
    if row == "no_kd":
        trainer: Trainer = Trainer(args=TrainingArguments(**common), **kwargs)
    else:
        method, alpha = (
            ("fixed", float(method_row.split("_")[1]))
            if method_row.startswith("fixed_")
            else (method_row, 0.5)
        )
        config = DTOKDConfig(
            **common,
            method=method,
            alpha=alpha,
            temperature=args.temperature,
            teacher_model_name_or_path=str(teacher_dir(args, fold)),
        )
        if signal.startswith("feature_"):
            trainer = FeatureKDTrainer(
                args=config,
                processing_class=student_processor(),
                group_features=True,
                projector=signal.split("_", 1)[1],
                **kwargs,
            )
        elif signal.startswith("deit_"):
            trainer = DeiTTokenTrainer(
                args=config,
                processing_class=student_processor(),
                distillation=signal.split("_", 1)[1],
                **kwargs,
            )
        else:
            trainer = DTOKDTrainer(args=config, processing_class=student_processor(), **kwargs)
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    history = trainer.state.log_history
    curve = [(row_["step"], row_["eval_top1"]) for row_ in history if "eval_top1" in row_]
    pis = [(row_["step"], row_["pi_distill"]) for row_ in history if "pi_distill" in row_]
    cosines = [row_["grad_cos"] for row_ in history if "grad_cos" in row_]
    evaluations = len(curve)
    return {
        "row": row,
        "fold": fold,
        "seed": seed,
        "top1": curve[-1][1],
        "curve": curve,
        "pi": pis,
        "share_logged_steps_conflicting": (sum(c < 0 for c in cosines) / len(cosines)) if cosines else None,
        "conflict_rate_per_step": per_step_conflict(trainer),
        "seconds_per_step": wall / args.max_steps,
        "evaluations": evaluations,
        "threads": torch.get_num_threads(),
    }


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.ERROR)


def _run_task(task: tuple[CompareArguments, str, int, int]) -> dict[str, Any]:
    return run_one(*task)


# ---------------------------------------------------------------------------------------------- report
def summarise(args: CompareArguments, runs: list[dict[str, Any]], teachers: list[float]) -> dict[str, Any]:
    by_row = {row: {(r["fold"], r["seed"]): r for r in runs if r["row"] == row} for row in args.rows}
    pairs = sorted(by_row[BASELINE])
    baseline_curve = mean_curve([by_row[BASELINE][p]["curve"] for p in pairs])
    target = baseline_curve[-1][1]
    table = []
    for row in args.rows:
        top1 = [by_row[row][p]["top1"] for p in pairs]
        diffs = [by_row[row][p]["top1"] - by_row[BASELINE][p]["top1"] for p in pairs]
        curve = mean_curve([by_row[row][p]["curve"] for p in pairs])
        reach = first_step_at(curve, target)
        pis = [v for p in pairs for _, v in by_row[row][p]["pi"]]
        conflict = [by_row[row][p]["share_logged_steps_conflicting"] for p in pairs]
        table.append(
            {
                "row": row,
                "pairs": len(pairs),
                "top1_mean": statistics.fmean(top1),
                "top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
                "diff_to_baseline": statistics.fmean(diffs),
                "diff_se": statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0,
                "first_step_reaching_baseline": reach,
                "seconds_per_step": statistics.fmean(by_row[row][p]["seconds_per_step"] for p in pairs),
                "mean_pi_distill": statistics.fmean(pis) if pis else None,
                "share_logged_steps_conflicting": statistics.fmean(conflict)
                if None not in conflict
                else None,
                "conflict_rate_per_step": mean_or_none(
                    [by_row[row][p].get("conflict_rate_per_step") for p in pairs]
                ),
                "curve": curve,
                "pi_curve": mean_curve([by_row[row][p]["pi"] for p in pairs]) if pis else [],
            }
        )
    return {"baseline_final_top1": target, "teacher_top1_per_fold": teachers, "table": table}


def paper_summary(
    args: CompareArguments, runs: list[dict[str, Any]], teachers: list[float]
) -> dict[str, Any]:
    """Per row: final top-1 (the test fold, or the validation split for pilots), the paired difference to the
    best fixed alpha of the same distillation signal, the steps its validation curve takes to reach that
    row's final validation accuracy, and per-step figures: the share of optimizer steps whose distillation
    and task gradients conflict (cosine < 0; all steps and the last quarter) and the median raw-loss weights
    applied."""
    by_row = {row: {(r["fold"], r["seed"]): r for r in runs if r["row"] == row} for row in args.rows}
    common = sorted(set.intersection(*[set(v) for v in by_row.values()]))
    mean_top1 = {row: statistics.fmean(by_row[row][p]["top1"] for p in common) for row in args.rows}
    best_fixed: dict[str, str] = {}
    for row in args.rows:
        signal, method = split_row(row)
        if method.startswith("fixed_"):
            current = best_fixed.get(signal)
            if current is None or mean_top1[row] > mean_top1[current]:
                best_fixed[signal] = row

    def baseline_of(row: str) -> str:
        # the best fixed alpha of the row's signal (logit KD's for no KD)
        return best_fixed.get(split_row(row)[0]) or best_fixed["logits"]

    seeds = args.seeds_of_row()
    unpaired = {row: (baseline, n) for row, n in seeds.items() if n > seeds[baseline := baseline_of(row)]}
    if unpaired:
        raise ValueError(
            "--row_seeds: "
            + "; ".join(
                f"{row} runs {n} seeds per fold, its best fixed alpha {baseline} {seeds[baseline]}"
                for row, (baseline, n) in unpaired.items()
            )
            + ", so the extra runs would pair with nothing: give "
            + " ".join(sorted({f"{baseline}={n}" for baseline, n in unpaired.values()}))
            + " (it also runs them)"
        )
    table = []
    for row in args.rows:
        signal, baseline = split_row(row)[0], baseline_of(row)
        # the pairs every row has, and the extra seeds' pairs this row shares with its baseline
        pairs = sorted(set(by_row[row]) & set(by_row[baseline]))
        top1 = [by_row[row][p]["top1"] for p in pairs]
        diffs = [by_row[row][p]["top1"] - by_row[baseline][p]["top1"] for p in pairs]
        curve = mean_curve([by_row[row][p]["curve"] for p in pairs])
        target = mean_curve([by_row[baseline][p]["curve"] for p in pairs])[-1][1]
        reach = first_step_at(curve, target)
        per_pair_reach = reach_per_pair(
            [by_row[row][p]["curve"] for p in pairs], [by_row[baseline][p]["curve"] for p in pairs]
        )
        steps = [by_row[row][p]["per_step"] for p in pairs]

        def share(values: list[float | None]) -> float | None:
            known = [v for v in values if v is not None and not math.isnan(v)]
            return sum(v < 0 for v in known) / len(known) if known else None

        def late(values: list[Any]) -> list[Any]:
            return values[len(values) * 3 // 4 :]

        conflict = [share(s_["grad_cos"]) for s_ in steps]
        late_conflict = [share(late(s_["grad_cos"])) for s_ in steps]
        weights = {name: [w for s_ in steps for w in s_[name]] for name in ("weight_distill", "weight_task")}
        late_weights = {name: [w for s_ in steps for w in late(s_[name])] for name in weights}
        pis = [v for s_ in steps for v in s_["pi_distill"] if v is not None]
        # a vertex of the simplex: the applied distillation weight within 1e-3 of 0 or 1 (one objective alone)
        vertex = [w <= 1e-3 or w >= 1 - 1e-3 for w in weights["weight_distill"]]
        table.append(
            {
                "row": row,
                "signal": signal,
                "experiment": is_experiment(row),
                "pairs": len(pairs),
                "baseline": baseline,
                "top1_mean": statistics.fmean(top1),
                "top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
                "diff_to_baseline": statistics.fmean(diffs),
                "diff_se": statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0,
                "wins": sum(d > 0 for d in diffs),
                "losses": sum(d < 0 for d in diffs),
                "first_step_reaching_baseline": reach,
                "baseline_final_validation_top1": target,
                "reach_per_pair": per_pair_reach,
                "last_quarter_gain": last_quarter_gain(curve),
                "conflict_rate": statistics.fmean(conflict) if None not in conflict else None,
                "conflict_rate_last_quarter": statistics.fmean(late_conflict)
                if None not in late_conflict
                else None,
                "median_weight_distill": statistics.median(weights["weight_distill"]),
                "median_weight_task": statistics.median(weights["weight_task"]),
                "median_weight_distill_last_quarter": statistics.median(late_weights["weight_distill"]),
                "median_weight_task_last_quarter": statistics.median(late_weights["weight_task"]),
                "mean_pi_distill": statistics.fmean(pis) if pis else None,
                # fixed weights sit where alpha puts them: a vertex share says something of dynamic rows only
                "vertex_share": None
                if split_row(row)[1].startswith("fixed_") or row == "no_kd"
                else sum(vertex) / len(vertex),
                "seconds_per_step": statistics.fmean(by_row[row][p]["seconds_per_step"] for p in pairs),
                "curve": curve,
            }
        )
    return {
        "best_fixed": best_fixed,
        "common_pairs": len(common),
        "teacher_top1_per_fold": teachers,
        "table": table,
    }


def run_step_figures(run: dict[str, Any]) -> dict[str, Any]:
    """One run's per-step summary: conflict rate and median applied weights (the table's inputs per run)."""
    steps = run["per_step"]
    cosines = [c for c in steps["grad_cos"] if c is not None and not math.isnan(c)]
    return {
        "conflict_rate": sum(c < 0 for c in cosines) / len(cosines) if cosines else None,
        "median_weight_distill": statistics.median(steps["weight_distill"]),
        "median_weight_task": statistics.median(steps["weight_task"]),
    }


def paper_markdown(
    args: CompareArguments, summary: dict[str, Any], pilots: list[dict[str, Any]] | None = None
) -> str:
    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    def share(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f} %"

    scored = "test" if args.evaluate_on == "test" else "validation"
    common = summary["common_pairs"]
    more = any(r["pairs"] != common for r in summary["table"])
    header = [
        f"| row | {scored} top-1 % (mean +- std, {common} paired runs{'; more where marked' if more else ''}) "
        "| diff to best fixed "
        "(pp, +- SE; wins / losses) | first step at best fixed's final (mean curve; pairs earlier / same / later / "
        "never, median step ratio) | steps in conflict (all / last quarter) "
        "| median applied weight distill / task (all; last quarter) | mean pi_distill | steps at a vertex | s / step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def row_line(r: dict[str, Any]) -> str:
        diff = (
            "best fixed"
            if r["row"] == r["baseline"]
            else f"{100 * r['diff_to_baseline']:+.2f} +- {100 * r['diff_se']:.2f} ({r['wins']} / {r['losses']})"
        )
        reach = (
            "not reached"
            if r["first_step_reaching_baseline"] is None
            else str(r["first_step_reaching_baseline"])
        )
        if r["row"] != r["baseline"]:
            counts = r["reach_per_pair"]
            ratio = counts["median_step_ratio"]
            reach += (
                f" ({counts['earlier']} / {counts['same']} / {counts['later']} / {counts['never']}; "
                f"{'never' if ratio is None else f'{ratio:.2f}'})"
            )
        conflict = (
            "-"
            if r["conflict_rate"] is None
            else f"{share(r['conflict_rate'])} / {share(r['conflict_rate_last_quarter'])}"
        )
        weights = (
            f"{r['median_weight_distill']:.3f} / {r['median_weight_task']:.3f}; "
            f"{r['median_weight_distill_last_quarter']:.3f} / {r['median_weight_task_last_quarter']:.3f}"
        )
        pi = "-" if r["mean_pi_distill"] is None else f"{r['mean_pi_distill']:.3f}"
        pairs = "" if r["pairs"] == common else f" ({r['pairs']} pairs)"
        return (
            f"| {r['row']} | {pct(r['top1_mean'])} +- {pct(r['top1_std'])}{pairs} | {diff} | {reach} | {conflict} | "
            f"{weights} | {pi} | {share(r.get('vertex_share'))} | {r['seconds_per_step']:.3f} |"
        )

    compared = [r for r in summary["table"] if not r.get("experiment")]
    experiments = [r for r in summary["table"] if r.get("experiment")]
    lines = header + [row_line(r) for r in compared]
    if experiments:
        lines += [
            "",
            "Experiments, not methods to compare against (the library warns when one is chosen; their figures are "
            "kept here, outside the comparison):",
            "",
            *header,
            *[row_line(r) for r in experiments],
        ]
    teachers = ", ".join(pct(t) for t in summary["teacher_top1_per_fold"])
    folds_read = (
        f"fold {', '.join(map(str, args.only_folds))} of {args.folds} stratified folds"
        if args.only_folds is not None
        else f"{args.folds} stratified folds"
    )
    augmentation = (f"RandAugment `{args.rand_augment}`" if args.rand_augment else "no RandAugment") + (
        f", Mixup {args.mixup_alpha} / CutMix {args.cutmix_alpha} (p = {args.mixup_prob}), label smoothing "
        f"{args.label_smoothing}"
        if args.mixup_prob > 0
        else f", no Mixup / CutMix, label smoothing {args.label_smoothing}"
    )
    extra = (
        f" ({', '.join(f'`{row}` {n}' for row, n in args.seeds_of_row().items() if n > args.seeds)} seeds: their "
        "figures over every pair they share with their best fixed alpha, chosen on the pairs every row has)"
        if args.row_seeds
        else ""
    )
    lines += [
        "",
        f"Digits, {folds_read} x {args.seeds} seeds{extra}; every training image labelled "
        f"({100 * (1 - args.validation_fraction):.0f} % of each fold's pool; the rest is the validation split that "
        f"fixed the settings and gives the curves); student {student_description(args)}, {args.max_steps} steps, "
        f"batch {args.batch_size}, AdamW {args.learning_rate} (wd 0.05, cosine)"
        + (
            f", evaluated and scored on the moving average of its weights (decay {args.ema_decay}, timm's warm-up)"
            if args.ema_decay
            else ""
        )
        + f"; {augmentation} (timm); teacher "
        f"ResNet 32-64-128 (24 px) per fold, test top-1 {teachers}. T = {args.temperature}. `feature_vkd_*`: logit "
        "KD + VkD feature KD summed into one distillation objective (FeatureKDTrainer's default), "
        f"gram_parameters = {args.gram_parameters!r} for its DTO-KD row unless the row names it (`*_dto_shared`: the "
        "parameters both losses reach). `deit_soft_*`: DeiT's distillation token (soft) on a two-head DeiT of the "
        "ViT's shape. no_kd = fixed alpha 0 (task loss only, same pipeline). DOT (alpha 0.5): `dot_adamw` its "
        f"AdamW form, `dot` the reference SGD form (momenta 0.9 -/+ 0.075, lr {args.sgd_learning_rate}, wd 5e-4; "
        "`dot_lrX`: at lr X). Conflict figures exist for the rows that compute both gradients (DTO-KD, DOT); "
        "weights are the raw-loss weights applied each step.",
    ]
    by_row = {r["row"]: r for r in summary["table"]}
    gains = {
        row: gain
        for row in dict.fromkeys(summary["best_fixed"].values())
        if (gain := by_row[row].get("last_quarter_gain")) is not None
    }
    if gains:
        converged = all(gain < 0.005 for gain in gains.values())
        lines += [
            "",
            "Convergence: the best fixed alpha's mean validation curve gains "
            + ", ".join(f"`{row}` {100 * gain:+.2f} pp" for row, gain in gains.items())
            + " over the last quarter of training: "
            + (
                "a plateau (under 0.5 pp)."
                if converged
                else "NOT converged (0.5 pp or more): the rows are compared before the plateau; raise --max_steps."
            ),
        ]
    paired = [r for r in compared if r["row"] != r["baseline"] and r["pairs"] > 1]
    if paired:
        widest = max(paired, key=lambda r: r["diff_se"])
        lines += [
            "",
            f"Resolution: the largest paired standard error of a compared row is {100 * widest['diff_se']:.2f} pp "
            f"(`{widest['row']}`): "
            + (
                f"every compared row's is at most {100 * RESOLUTION_SE:.1f} pp."
                if widest["diff_se"] <= RESOLUTION_SE
                else f"above {100 * RESOLUTION_SE:.1f} pp: add seeds (--seeds, --row_seeds) or folds."
            ),
        ]
    for pilot in pilots or []:
        rows = ", ".join(
            f"{row} {100 * top1:.1f}"
            + ("" if (gain := pilot["last_quarter_gain"].get(row)) is None else f" ({100 * gain:+.2f} pp)")
            for row, top1 in pilot["validation_top1"].items()
        )
        arguments = pilot["arguments"]
        lines += [
            "",
            f"Validation pilot `{pilot['pilot']}` ({arguments['max_steps']} steps, lr {arguments['learning_rate']}, "
            f"width {arguments['student_width']}): validation top-1 % (last-quarter gain) {rows}.",
        ]
    defaults = CompareArguments(regime=args.regime, student_family=args.student_family)
    flags = [f"--regime {args.regime} --student_family {args.student_family}"] + [
        f"--{name} {' '.join(map(str, value)) if isinstance(value, list) else value}"
        for name, value in asdict(args).items()
        if name
        not in ("output_dir", "results_dir", "workers", "rows", "regime", "student_family", "stop_file")
        and value != getattr(defaults, name)
    ]
    lines += ["", f"Command: `python benchmarks/compare_methods.py {' '.join(flags)}`."]
    return "\n".join(lines)


def paper_plot(summary: dict[str, Any], runs: list[dict[str, Any]], path: Path) -> None:
    """Validation curves; the per-step cosine and applied distillation weight of one paired run (fold 0,
    seed 0) for the balancing rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, zoom_ax, cos_ax, weight_ax) = plt.subplots(1, 4, figsize=(22, 4.8))
    palette = plt.get_cmap("tab20")
    colours = {r["row"]: palette(i % 20) for i, r in enumerate(summary["table"])}
    late_values = []
    for r in summary["table"]:
        steps, values = zip(*r["curve"]) if r["curve"] else ((), ())
        style = "-" if r["signal"] == "logits" else ":"
        for ax in (acc_ax, zoom_ax):
            ax.plot(steps, [100 * v for v in values], style, label=r["row"], color=colours[r["row"]])
        late_values += [100 * v for s_, v in r["curve"] if steps and s_ >= steps[-1] / 2]
    if late_values:
        # the second half, where converged rows differ by tenths of a point (a row far below is cut at 5 pp)
        top = max(late_values)
        zoom_ax.set_xlim(max(s_ for r in summary["table"] for s_, _ in r["curve"]) / 2, None)
        zoom_ax.set_ylim(max(min(late_values), top - 5) - 0.2, top + 0.2)
    zoom_ax.set(xlabel="step", ylabel="validation top-1 %", title="accuracy, second half (zoom)")
    first = {r["row"]: r for r in runs if r["fold"] == 0 and r["seed"] == 0}
    for row, run in first.items():
        figures = run["per_step"]
        if split_row(row)[1].startswith("fixed_") or row == "no_kd":
            continue
        cos = [(s_, c) for s_, c in zip(figures["step"], figures["grad_cos"]) if c is not None]
        if cos:
            cos_ax.plot(*zip(*cos), ".", markersize=2, label=row, color=colours[row], alpha=0.6)
        weight_ax.plot(
            figures["step"], figures["weight_distill"], "-", linewidth=0.8, label=row, color=colours[row]
        )
    cos_ax.axhline(0.0, color="black", linewidth=0.6)
    acc_ax.set(xlabel="step", ylabel="validation top-1 % (mean over paired runs)", title="accuracy")
    cos_ax.set(
        xlabel="step", ylabel="cos(grad L_distill, grad L_task)", title="per-step cosine (fold 0, seed 0)"
    )
    weight_ax.set(
        xlabel="step", ylabel="raw-loss weight on L_distill", title="per-step applied weight (fold 0, seed 0)"
    )
    if any(
        max(line.get_ydata(), default=0) > 0 for line in weight_ax.lines
    ):  # no dynamic row: nothing to scale
        weight_ax.set_yscale("log")
    zoom_ax.grid(alpha=0.3)
    for ax in (acc_ax, cos_ax, weight_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # the cosine panel is empty when no row computes both gradients
            ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def first_step_at(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first evaluation step at which ``curve`` reaches ``target`` (None: never)."""
    return next((step for step, acc in curve if acc >= target - 1e-12), None)


def reach_per_pair(
    row_curves: list[list[tuple[int, float]]], baseline_curves: list[list[tuple[int, float]]]
) -> dict[str, Any]:
    """Steps to accuracy pair by pair (the paper's "same accuracy in 80 % of the epochs"): in each pair, the
    first evaluation at which the row's validation curve reaches the best fixed alpha's own final accuracy of that
    pair, against the first at which the best fixed alpha's curve does. Counts the pairs where the row gets there
    earlier, at the same evaluation, later or never, and the median over pairs of the ratio of the two steps
    (a pair the row never reaches counts as infinite; None when that is the median). The mean curve's first step
    says when the average gets there, not how often a run does."""
    counts: dict[str, Any] = {"earlier": 0, "same": 0, "later": 0, "never": 0}
    ratios = []
    for row_curve, baseline_curve in zip(row_curves, baseline_curves, strict=True):
        target = baseline_curve[-1][1]
        row_step, baseline_step = first_step_at(row_curve, target), first_step_at(baseline_curve, target)
        if row_step is None:
            counts["never"] += 1
            ratios.append(math.inf)
            continue
        counts[
            "earlier" if row_step < baseline_step else "same" if row_step == baseline_step else "later"
        ] += 1
        ratios.append(row_step / baseline_step)
    median = statistics.median(ratios) if ratios else math.inf
    counts["median_step_ratio"] = None if math.isinf(median) else median
    return counts


def mean_or_none(values: list[float | None]) -> float | None:
    return statistics.fmean(values) if values and None not in values else None


def last_quarter_gain(curve: list[tuple[int, float]]) -> float | None:
    """How much a (validation) curve gains over the last quarter of training: its final accuracy minus its
    accuracy at the last evaluation at or before three quarters of the final step. The converged benchmark asks
    the best fixed alpha's gain to be below 0.5 pp (a plateau) before rows are compared."""
    if len(curve) < 2:
        return None
    final_step, final = curve[-1]
    earlier = [acc for step, acc in curve if step <= 0.75 * final_step]
    return final - earlier[-1] if earlier else None


def pilot_record(path: Path) -> dict[str, Any]:
    """A validation pilot as the report keeps it: its arguments, and per row its validation top-1 and the gain of
    its mean validation curve over the last quarter (the plateau check that chose the budget)."""
    pilot = json.loads(path.read_text())
    if pilot.get("arguments", {}).get("evaluate_on") != "validation":
        raise ValueError(
            f"pilot {path} was not scored on the validation split (evaluate_on = "
            f"{pilot.get('arguments', {}).get('evaluate_on')!r}); settings are chosen on validation only: pass the "
            "results file of a run made with --evaluate_on validation"
        )
    return {
        "pilot": str(path),
        "arguments": pilot["arguments"],
        "validation_top1": {r["row"]: r["top1_mean"] for r in pilot["table"]},
        "last_quarter_gain": {
            r["row"]: last_quarter_gain([tuple(point) for point in r["curve"]]) if r.get("curve") else None
            for r in pilot["table"]
        },
    }


def mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    steps = sorted(set.intersection(*[{s for s, _ in c} for c in curves])) if curves else []
    lookup = [dict(c) for c in curves]
    return [(s, statistics.fmean(d[s] for d in lookup)) for s in steps]


def student_description(args: CompareArguments) -> str:
    if args.student_family == "vit":
        return f"ViT {args.student_layers}x{args.student_width}, patch {args.student_patch} (32 px)"
    w = args.student_width
    return f"ResNet {w // 4}-{w // 2}-{w} (one basic block per stage, 32 px)"


def markdown(args: CompareArguments, summary: dict[str, Any]) -> str:
    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    lines = [
        f"| method | top-1 % (mean +- std, {summary['table'][0]['pairs']} paired runs) | "
        f"diff to {BASELINE} (pp, +- SE) | first step at {BASELINE}'s final {pct(summary['baseline_final_top1'])} | "
        "s / step | mean pi_distill | logging intervals with mean cos < 0 | optimizer steps with cos < 0 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["table"]:
        diff = (
            "-" if r["row"] == BASELINE else f"{100 * r['diff_to_baseline']:+.2f} +- {100 * r['diff_se']:.2f}"
        )
        reach = (
            "not reached"
            if r["first_step_reaching_baseline"] is None
            else str(r["first_step_reaching_baseline"])
        )
        pi = "-" if r["mean_pi_distill"] is None else f"{r['mean_pi_distill']:.3f}"
        conflict = (
            "-"
            if r["share_logged_steps_conflicting"] is None
            else f"{100 * r['share_logged_steps_conflicting']:.0f} %"
        )
        per_step = r.get("conflict_rate_per_step")
        per_step = "not recorded" if per_step is None else f"{100 * per_step:.1f} %"
        if r["share_logged_steps_conflicting"] is None:
            per_step = "-"
        lines.append(
            f"| {r['row']} | {pct(r['top1_mean'])} +- {pct(r['top1_std'])} | {diff} | {reach} | "
            f"{r['seconds_per_step']:.3f} | {pi} | {conflict} | {per_step} |"
        )
    teachers = ", ".join(pct(t) for t in summary["teacher_top1_per_fold"])
    pool = (
        ", KD runs also distilling on the rest of the fold's pool, unlabelled (no_kd: the labelled images only)"
        if args.unlabelled_pool
        else ""
    )
    lines += [
        "",
        f"Digits, {args.folds} stratified folds x {args.seeds} seeds; student {student_description(args)} trained on {args.labelled_per_class} labelled images per class for "
        f"{args.max_steps} steps{pool} (batch {args.batch_size}, AdamW {args.learning_rate}, cosine; DOT-SGD: SGD "
        f"{args.sgd_learning_rate}); teacher ResNet (24 px) per fold, top-1 {teachers}. T = {args.temperature}, "
        "alpha = 0.5 for DOT, every other hyper-parameter at its library default.",
    ]
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, pi_ax) = plt.subplots(1, 2, figsize=(13, 4.8))
    palette = plt.get_cmap("tab20")
    for index, r in enumerate(summary["table"]):
        colour = palette(index % 20)
        steps, values = zip(*r["curve"]) if r["curve"] else ((), ())
        style = "-" if r["row"] in ("dto", "dto_amortized", BASELINE, "no_kd") else ":"
        acc_ax.plot(steps, [100 * v for v in values], style, label=r["row"], color=colour)
        if r["pi_curve"] and not r["row"].startswith("fixed") and r["row"] not in ("dot", "dot_adamw"):
            pi_steps, pi_values = zip(*r["pi_curve"])
            pi_ax.plot(pi_steps, pi_values, style, label=r["row"], color=colour)
    acc_ax.set(xlabel="step", ylabel="test top-1 % (mean over paired runs)", title="accuracy")
    acc_ax.set_ylim(bottom=max(0.0, min(100 * r["top1_mean"] for r in summary["table"]) - 15))
    pi_ax.set(xlabel="step", ylabel="pi_distill (mean over runs)", title="trade-off of the balancing methods")
    for ax in (acc_ax, pi_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _run_file(runs_dir: Path, row: str, fold: int, seed: int) -> Path:
    return runs_dir / f"{row}__fold{fold}__seed{seed}.json.gz"


def finished_runs(
    args: CompareArguments, settings: dict[str, Any], teachers: dict[int, str]
) -> dict[tuple[str, int, int], dict[str, Any]]:
    """The runs already recorded with these settings, by ``(row, fold, seed)``; refused when a recorded run of
    one of these folds was trained against another teacher than ``teachers`` (fold -> weights fingerprint)."""
    if args.runs_dir is None:
        path = Path(args.output_dir) / "runs.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    else:
        records = [
            json.loads(gzip.decompress(p.read_bytes())) for p in sorted(Path(args.runs_dir).glob("*.json.gz"))
        ]
        # a run file is named by row, fold and seed only: other settings would silently replace committed runs
        other = [r for r in records if r["settings"] != settings]
        if other:
            differ = {
                k: (other[0]["settings"].get(k), settings.get(k))
                for k in sorted(set(settings) | set(other[0]["settings"]))
                if other[0]["settings"].get(k) != settings.get(k)
            }
            raise ValueError(
                f"--runs_dir {args.runs_dir} holds {len(other)} runs made with other settings (recorded, given: "
                f"{differ}); pass the flags they were made with (the folder's README or results name them), or "
                "another --runs_dir"
            )
    records = [r for r in records if r.pop("settings") == settings]
    # a recorded run is paired with new ones only when both were trained against the same teacher weights
    other_teacher = [
        r for r in records if r["fold"] in teachers and r.get("teacher_weights") != teachers[r["fold"]]
    ]
    if other_teacher:
        example = other_teacher[0]
        raise ValueError(
            f"{args.runs_dir or Path(args.output_dir) / 'runs.jsonl'} holds {len(other_teacher)} runs trained "
            f"against other teachers than those in {Path(args.teachers_dir or args.output_dir)} (e.g. "
            f"{example['row']} fold {example['fold']} seed {example['seed']}: teacher weights "
            f"{example.get('teacher_weights', 'not recorded')}, here {teachers[example['fold']]}); new runs would be "
            "paired with them: pass --teachers_dir with the teachers they were trained against, or another "
            "--runs_dir"
        )
    return {(r["row"], r["fold"], r["seed"]): r for r in records}


def record_run(args: CompareArguments, settings: dict[str, Any], run: dict[str, Any]) -> None:
    """Append a finished run to runs.jsonl, or write it to its own file in ``runs_dir`` (atomically)."""
    record = json.dumps({**run, "settings": settings})
    if args.runs_dir is None:
        path = Path(args.output_dir) / "runs.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as sink:
            sink.write(record + "\n")
        return
    path = _run_file(Path(args.runs_dir), run["row"], run["fold"], run["seed"])
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(gzip.compress(record.encode(), mtime=0))
    partial.replace(path)


def pilot_files(args: CompareArguments) -> list[Path]:
    if args.pilots is not None:
        missing = [path for path in args.pilots if not Path(path).is_file()]
        if missing:
            raise FileNotFoundError(
                f"--pilots names results files that do not exist: {missing}; pass the compare_methods.json a "
                "validation pilot wrote (its --results_dir)"
            )
        return [Path(path) for path in args.pilots]
    selection = Path(args.results_dir) / "selection"
    return sorted(selection.glob("*.json")) if selection.is_dir() else []


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from transformers import HfArgumentParser

    from hf_dtokd.demos.paired_seeds import weights_fingerprint

    (args,) = HfArgumentParser((CompareArguments,)).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    if args.regime == "paper" and args.evaluate_on == "test":
        # a misnamed or test-scored pilot is refused before hours of training, not after
        for path in pilot_files(args):
            pilot_record(path)
    folds = args.only_folds if args.only_folds is not None else list(range(args.folds))
    teachers = [train_teacher(args, fold) for fold in folds]
    # finished runs are recorded as they end (runs.jsonl, or one file each in --runs_dir), keyed by the settings
    # that change them, so an interrupted benchmark continues where it stopped
    ignored = (
        "rows",
        "folds",
        "seeds",
        "only_folds",
        "workers",
        "results_dir",
        "results_name",
        "runs_dir",
        "teachers_dir",
        "pilots",
        "finished_only",
        "row_seeds",
        "stop_file",
    )
    settings = {k: v for k, v in asdict(args).items() if k not in ignored}
    if not settings["ema_decay"]:
        # runs recorded before --ema_decay existed were made without an average: they match a run without one
        del settings["ema_decay"]
    fingerprints = {fold: weights_fingerprint(teacher_dir(args, fold)) for fold in folds}
    done = finished_runs(args, settings, fingerprints)
    every_pair = [(fold, seed) for seed in range(args.seeds) for fold in folds]
    pairs = [pair for pair in every_pair if all((row, *pair) in done for row in args.rows)]
    if args.finished_only and not pairs:
        raise ValueError(
            f"--finished_only: no fold / seed pair has all {len(args.rows)} rows recorded yet "
            f"({len(done)} runs recorded); run the benchmark without it first"
        )
    if not args.finished_only:
        pairs = every_pair
    # the pairs of the seeds beyond --seeds, for the rows --row_seeds gives more (their best fixed alpha among them)
    extra_pairs = {
        row: [(fold, seed) for seed in range(args.seeds, n) for fold in folds]
        for row, n in args.seeds_of_row().items()
        if n > args.seeds
    }
    tasks = [
        (args, row, fold, seed) for fold, seed in pairs for row in args.rows if (row, fold, seed) not in done
    ]
    if not args.finished_only:
        # seed by seed, fold by fold (as the common pairs), so that a benchmark stopped part-way has whole pairs
        tasks += sorted(
            (
                (args, row, fold, seed)
                for row, row_pairs in extra_pairs.items()
                for fold, seed in row_pairs
                if (row, fold, seed) not in done
            ),
            key=lambda task: (task[3], task[2], args.rows.index(task[1])),
        )
    threads = max(1, (os.cpu_count() or 1) // max(1, args.workers))

    def stopping() -> bool:
        return args.stop_file is not None and Path(args.stop_file).exists()

    def keep(run: dict[str, Any]) -> None:
        run["teacher_weights"] = fingerprints[run["fold"]]
        done[(run["row"], run["fold"], run["seed"])] = run
        record_run(args, settings, run)

    if args.workers > 1:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            args.workers, mp_context=context, initializer=_init_worker, initargs=(threads,)
        ) as pool:
            # one run per free worker (the pool would otherwise queue more than it runs, and a queued run cannot be
            # withdrawn once a worker has taken it), each recorded as it finishes: a stop loses nothing and waits
            # only for the runs in flight
            queue = iter(tasks)
            in_flight: set[Future[dict[str, Any]]] = set()

            def hand_over() -> None:
                task = None if stopping() else next(queue, None)
                if task is not None:
                    in_flight.add(pool.submit(_run_task, task))

            for _ in range(args.workers):
                hand_over()
            while in_flight:
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    in_flight.discard(future)
                    keep(future.result())
                    hand_over()
    else:
        for task in tasks:
            if stopping():
                break
            keep(_run_task(task))
    missing = [task[1:] for task in tasks if task[1:] not in done]
    if missing:
        print(
            f"Stopped (--stop_file {args.stop_file} exists): {len(tasks) - len(missing)} of {len(tasks)} runs of this "
            f"call recorded, {len(missing)} not started; the same command (without the stop file) goes on from there"
        )
        return {"stopped": True, "runs_recorded": len(tasks) - len(missing), "runs_missing": len(missing)}
    runs = [done[(row, fold, seed)] for fold, seed in pairs for row in args.rows] + [
        done[(row, fold, seed)]
        for row, row_pairs in extra_pairs.items()
        for fold, seed in row_pairs
        if (row, fold, seed) in done
    ]
    paper = args.regime == "paper"
    summary = paper_summary(args, runs, teachers) if paper else summarise(args, runs, teachers)
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    pilots = (
        [pilot_record(path) for path in pilot_files(args)] if paper and args.evaluate_on == "test" else []
    )
    table = paper_markdown(args, summary, pilots) if paper else markdown(args, summary)
    if len(pairs) < len(every_pair):
        table = (
            f"**In progress: {len(pairs)} of {len(every_pair)} fold / seed pairs finished by every row** "
            f"(folds / seeds {', '.join(f'{f}/{s_}' for f, s_ in pairs)}); the figures below are over these.\n\n"
            + table
        )
    if paper:
        hours = sum(r["seconds_per_step"] * args.max_steps for r in runs) / 3600
        table += (
            f"\n\nRun time: {len(runs)} runs, {hours:.1f} h summed (training and evaluation; {args.workers} side by "
            f"side: about {hours / args.workers:.1f} h of wall time)."
        )
    name = args.results_name
    if paper:
        paper_plot(summary, runs, results_dir / f"{name}.png")
        # every run keeps its per-step summary figures; the per-step traces of the plot's pair go to their own
        # compact file (all traces stay in <output_dir>/runs.jsonl)
        traces = {r["row"]: r["per_step"] for r in runs if (r["fold"], r["seed"]) == (0, 0)}
        (results_dir / f"{name}_per_step.json").write_text(json.dumps({"fold": 0, "seed": 0, "rows": traces}))
        # (pi per step is in the traces; the runs keep their evaluation curve and per-step summary figures)
        runs = [
            {**{k: v for k, v in r.items() if k not in ("per_step", "pi")}, **run_step_figures(r)}
            for r in runs
        ]
    else:
        plot(summary, results_dir / f"{name}.png")
    report = {
        "arguments": asdict(args),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads_per_run": threads,
            "workers": args.workers,
        },
        "total_seconds": time.perf_counter() - start,
        # the runs' own wall time (training and evaluation), summed: what the benchmark took across sessions,
        # with args.workers runs side by side (total_seconds is this invocation's only)
        "run_seconds_total": sum(r["seconds_per_step"] * args.max_steps for r in runs),
        "pairs_finished": len(pairs),
        "pairs_planned": len(every_pair),
        **summary,
        "runs": runs,
    }
    if paper and args.evaluate_on == "test":
        # the validation pilots that fixed this run's settings (no test fold read), as their own reports say
        report["settings_chosen_on_validation"] = pilots
    (results_dir / f"{name}.json").write_text(json.dumps(report, indent=1))
    (results_dir / f"{name}.md").write_text(table + "\n")
    print(table)
    print(
        f"\n{len(runs)} runs ({report['run_seconds_total'] / 3600:.1f} h of run time, {args.workers} side by side) "
        f"in {report['total_seconds']:.0f} s on {report['machine']['platform']}; wrote "
        f"{results_dir / name}.json, .md and .png"
    )
    return report


if __name__ == "__main__":
    main()
