"""Step cost of every trade-off method and gradient placement, as a ratio to plain weighted-sum KD.

Plain KD (``method="fixed"``: one backward of ``alpha L_distill + (1 - alpha) L_task``) is the floor.
Every variant trains the same student with the same teacher and batch (random pixels cost the same
as real ones) on this machine's device. Setups (``SETUPS``): at the digits' 32 px, two ViT students
(the demo's 0.14 M and a ~5 M one) x two ResNet teachers (the demo's and a ResNet-18); at ImageNet's
224 px, a DeiT-Tiny-shaped student (5.5 M) x a ResNet-18 and a ResNet-50 teacher, the usual distillation
setting where the teacher costs more than the student's forward. The tiny student runs every variant;
the others a representative subset (``BIG_VARIANTS``, ``TARGET_VARIANTS``) to keep the run short.
``--setups`` with ``--merge`` re-measures some setups and keeps the others' rows from the results file.

Timing: each repeat runs a short training of every variant in turn (interleaved, so machine noise
hits all alike); a callback times each optimizer step from ``on_step_begin`` to ``on_step_end``
(forward, teacher forward, backward passes, pi, optimizer step, look-ahead); warm-up steps are
dropped; each repeat's median is taken and the median over repeats is reported with its ratio to
``fixed``'s (robust to a load burst that hits one repeat). The teacher
forward is timed inside the step (its share of the median step).

Memory: a fresh process per variant (tiny teacher) trains a few steps while a thread samples its
resident set size every 2 ms; the figure is the peak RSS during training minus the RSS just before
``train()`` (CPU), or ``torch.cuda.max_memory_allocated`` over the same span on a GPU; the table
shows it beside ``fixed``'s. ``state MiB`` is what the method keeps between steps (per-loss gradient
buffers, DOT's momenta), counted from the trainer's tensors.

Writes ``benchmarks/results/step_cost.{json,md}`` (the README quotes the markdown) and prints the
machine. Run: ``python benchmarks/step_cost.py`` (``--help`` for the flags; ~20 min on 2 CPU cores).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Array3D, ClassLabel, Dataset, Features
from transformers import (
    HfArgumentParser,
    ResNetConfig,
    ResNetForImageClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
)

from hf_dtokd import ClassificationTask, DTOKDConfig, DTOKDTrainer
from hf_dtokd.balancing import GRAMIAN_METHODS
from hf_dtokd.demos.digits import build_student, build_teacher
from hf_dtokd.losses import logit_kd_loss

RESULTS = Path(__file__).parent / "results"
LABELS = [str(i) for i in range(10)]
FLOOR = "fixed"


class TwoTemperaturesTask(ClassificationTask):
    """Three objectives (logit KD at T and at 1, task): where batched per-loss gradients can apply."""

    objective_names = ("distill", "distill_t1", "task")

    def compute_objective_losses(self, student_logits, teacher_logits, labels):
        two = super().compute_objective_losses(student_logits, teacher_logits, labels)
        return torch.stack([two[0], logit_kd_loss(student_logits, teacher_logits, 1.0), two[1]])


def variants() -> dict[str, dict[str, Any]]:
    """Display name -> config overrides (``trainer`` picks a trainer class, ``no_kd`` the plain Trainer)."""
    table: dict[str, dict[str, Any]] = {"fixed": {"method": "fixed"}, "no_kd": {"no_kd": True}}
    table["dto @ parameters"] = {"method": "dto"}
    table["dto @ representation (logits)"] = {"method": "dto", "gradient_placement": "representation"}
    table["dto_amortized, same-batch look-ahead"] = {"method": "dto_amortized"}
    table["dto_amortized, next-batch look-ahead"] = {"method": "dto_amortized", "look_ahead": "next_batch"}
    for method in GRAMIAN_METHODS:
        if method != "dto":
            table[f"{method} @ parameters"] = {"method": method}
            table[f"{method} @ representation (logits)"] = {
                "method": method,
                "gradient_placement": "representation",
            }
    table["fixed, teacher_cache"] = {"method": "fixed", "teacher_cache": True}
    table["uncertainty"] = {"method": "uncertainty"}
    table["dot"] = {"method": "dot"}
    table["dot_adamw"] = {"method": "dot_adamw"}
    table["dto @ parameters, K=3, separate calls"] = {"method": "dto", "trainer": "three"}
    table["dto @ parameters, K=3, batched VJP"] = {
        "method": "dto",
        "trainer": "three",
        "batched_gradients": True,
    }
    return table


#: The issue's targets: (what, variant, largest ratio to plain KD).
TARGETS = (
    ("exact, at a shared representation", "dto @ representation (logits)", 1.10),
    ("exact, at all student parameters", "dto @ parameters", 1.5),
    ("amortized, same-batch look-ahead", "dto_amortized, same-batch look-ahead", 1.25),
    ("amortized, next-batch look-ahead", "dto_amortized, next-batch look-ahead", 1.05),
    ("DOT", "dot", 1.5),
)

TARGET_VARIANTS = (
    "fixed",
    "no_kd",
    "fixed, teacher_cache",
    *(variant for _, variant, _ in TARGETS),
)

BIG_VARIANTS = (
    "fixed",
    "no_kd",
    "dto @ parameters",
    "dto @ representation (logits)",
    "dto_amortized, same-batch look-ahead",
    "dto_amortized, next-batch look-ahead",
    "upgrad @ parameters",
    "upgrad @ representation (logits)",
    "dot",
)


def tiny_student() -> ViTForImageClassification:
    return build_student(0, LABELS)


def vit_5m() -> ViTForImageClassification:
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=4,
        hidden_size=256,
        num_hidden_layers=6,
        num_attention_heads=4,
        intermediate_size=1024,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=len(LABELS),
    )
    return ViTForImageClassification(config)


def resnet18() -> ResNetForImageClassification:
    torch.manual_seed(1234)
    config = ResNetConfig(
        embedding_size=64,
        hidden_sizes=[64, 128, 256, 512],
        depths=[2, 2, 2, 2],
        layer_type="basic",
        num_labels=len(LABELS),
    )
    return ResNetForImageClassification(config)


def deit_tiny_224() -> ViTForImageClassification:
    """DeiT-Tiny's shape (12 x 192, 3 heads, patch 16, 224 px): 5.5 M parameters."""
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=224,
        patch_size=16,
        hidden_size=192,
        num_hidden_layers=12,
        num_attention_heads=3,
        intermediate_size=768,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=len(LABELS),
    )
    return ViTForImageClassification(config)


def resnet50() -> ResNetForImageClassification:
    torch.manual_seed(1234)
    config = ResNetConfig(
        embedding_size=64,
        hidden_sizes=[256, 512, 1024, 2048],
        depths=[3, 4, 6, 3],
        layer_type="bottleneck",
        num_labels=len(LABELS),
    )
    return ResNetForImageClassification(config)


STUDENTS = {"vit_tiny": tiny_student, "vit_5m": vit_5m, "deit_tiny_224": deit_tiny_224}
TEACHERS = {"resnet_demo": lambda: build_teacher(LABELS), "resnet18": resnet18, "resnet50": resnet50}
IMAGE_SIZES = {"vit_tiny": 32, "vit_5m": 32, "deit_tiny_224": 224}
STUDENT_VARIANTS = {"vit_tiny": None, "vit_5m": BIG_VARIANTS, "deit_tiny_224": TARGET_VARIANTS}  # None: all
SETUPS = (
    "vit_tiny+resnet_demo",
    "vit_tiny+resnet18",
    "vit_5m+resnet_demo",
    "vit_5m+resnet18",
    "deit_tiny_224+resnet18",
    "deit_tiny_224+resnet50",
)


@dataclass
class StepCostArguments:
    repeats: int = field(
        default=6, metadata={"help": "Interleaved repeats (each trains every variant once)."}
    )
    steps: int = field(default=6, metadata={"help": "Optimizer steps per variant per repeat."})
    warmup: int = field(default=2, metadata={"help": "Steps dropped at the start of every run."})
    batch: int = field(default=64, metadata={"help": "Batch size with the tiny student."})
    big_batch: int = field(default=32, metadata={"help": "Batch size with the 5 M student (32 px)."})
    deit_batch: int = field(default=16, metadata={"help": "Batch size with the 224 px DeiT-Tiny student."})
    memory_steps: int = field(default=4, metadata={"help": "Steps of each memory-measuring process."})
    setups: list[str] = field(
        default_factory=lambda: list(SETUPS), metadata={"help": f"student+teacher pairs among {SETUPS}."}
    )
    merge: bool = field(
        default=False,
        metadata={"help": "Keep the rows of setups not run now from the existing step_cost.json."},
    )
    only: list[str] = field(
        default_factory=list, metadata={"help": "Run only these variants (default: all)."}
    )
    results_dir: str = field(default=str(RESULTS), metadata={"help": "Where step_cost.json / .md go."})
    render_only: bool = field(
        default=False, metadata={"help": "Only re-write step_cost.md from an existing step_cost.json."}
    )

    def __post_init__(self) -> None:
        unknown_variants = [v for v in self.only if v not in variants()]
        if unknown_variants:
            raise ValueError(f"unknown variants {unknown_variants}; valid: {list(variants())}")
        if self.only and FLOOR not in self.only:
            raise ValueError(f"--only must include the floor {FLOOR!r} (every ratio is to it)")
        if self.steps - self.warmup < 1 or self.repeats < 1:
            raise ValueError("steps must exceed warmup and repeats must be >= 1")
        unknown = [s for s in self.setups if s not in SETUPS]
        if unknown:
            raise ValueError(f"unknown setups {unknown}; valid: {list(SETUPS)}")

    def batch_of(self, student: str) -> int:
        return {"vit_tiny": self.batch, "vit_5m": self.big_batch, "deit_tiny_224": self.deit_batch}[student]


def random_pixels(n: int, size: int = 32) -> Dataset:
    rng = np.random.default_rng(0)
    features = Features(
        {"pixel_values": Array3D((3, size, size), "float32"), "labels": ClassLabel(num_classes=10)}
    )
    data = {
        "pixel_values": rng.standard_normal((n, 3, size, size)).astype(np.float32),
        "labels": rng.integers(0, 10, n),
    }
    return Dataset.from_dict(data, features=features).with_format("torch")


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.durations: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        synchronize()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        synchronize()
        self.durations.append(time.perf_counter() - self._start)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build_trainer(name: str, student: str, teacher: torch.nn.Module, steps: int, batch: int, callbacks: list):
    """The trainer of one variant, ready to ``train()``; the teacher forward is timed into ``teacher_times``."""
    settings = dict(variants()[name])
    common = dict(
        output_dir="/tmp/hf_dtokd_step_cost",
        use_cpu=not torch.cuda.is_available(),
        per_device_train_batch_size=batch,
        max_steps=steps,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_steps=10_000,
        seed=0,
    )
    model, data = STUDENTS[student](), random_pixels(batch * steps, IMAGE_SIZES[student])
    if settings.pop("no_kd", False):
        return Trainer(model=model, args=TrainingArguments(**common), train_dataset=data, callbacks=callbacks)
    three = settings.pop("trainer", None) == "three"
    config = DTOKDConfig(**common, plot_tradeoff=False, **settings)
    trainer = DTOKDTrainer(
        model=model,
        teacher_model=teacher,
        args=config,
        train_dataset=data,
        callbacks=callbacks,
        task=TwoTemperaturesTask(config) if three else None,
    )
    trainer.teacher_times = []
    teacher_forward = trainer.distillation_teacher.forward  # a live teacher forward (not a cache read)

    def timed(*args: Any, **kwargs: Any) -> torch.Tensor:
        synchronize()
        start = time.perf_counter()
        out = teacher_forward(*args, **kwargs)
        synchronize()
        trainer.teacher_times.append(time.perf_counter() - start)
        return out

    trainer.distillation_teacher.forward = timed
    return trainer


def state_mib(trainer: Trainer) -> float:
    """Tensors the method keeps between steps: per-loss gradient buffers and the balancer's tensors."""
    total = 0
    placement = getattr(trainer, "placement", None)  # a plain Trainer (no KD) has none
    gradients = placement.gradients if placement is not None else None
    if gradients is not None:
        total += gradients.buffers.numel() * gradients.buffers.element_size()
    balancer = getattr(trainer, "balancer", None)
    for value in vars(balancer).values() if balancer is not None else ():
        tensors = value if isinstance(value, (list, tuple)) else [value]
        total += sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
    return total / 2**20


class RssSampler:
    """Peak resident set size (bytes) of this process while running, sampled from /proc every 2 ms."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = self.current()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.current())

    def __enter__(self) -> RssSampler:
        self.start = self.current()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


def measure_memory(name: str, student: str, steps: int, batch: int) -> dict[str, float]:
    """Run in a fresh process (``--memory``): extra memory of ``steps`` training steps over the idle trainer."""
    trainer = build_trainer(name, student, TEACHERS["resnet_demo"](), steps, batch, [])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        trainer.train()
        return {
            "peak_mib": (torch.cuda.max_memory_allocated() - start) / 2**20,
            "state_mib": state_mib(trainer),
        }
    with RssSampler() as rss:
        trainer.train()
    return {"peak_mib": (rss.peak - rss.start) / 2**20, "state_mib": state_mib(trainer)}


def memory_in_fresh_process(name: str, student: str, steps: int, batch: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--memory", json.dumps([name, student, steps, batch])]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu
            )
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def time_setup(
    student: str, teacher_name: str, names: list[str], args: StepCostArguments
) -> list[dict[str, Any]]:
    teacher = TEACHERS[teacher_name]()
    batch = args.batch_of(student)
    times: dict[str, list[list[float]]] = {n: [] for n in names}  # one list of step times per repeat
    teacher_share: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.repeats):
        for name in names:
            timer = StepTimer()
            trainer = build_trainer(name, student, teacher, args.steps, batch, [timer])
            trainer.train()
            times[name].append(timer.durations[args.warmup :])
            spent = getattr(trainer, "teacher_times", [])
            if spent:  # one teacher forward per step (no accumulation here)
                teacher_share[name] += [
                    t / d for t, d in zip(spent[args.warmup :], timer.durations[args.warmup :])
                ]
    # the median over repeats of each repeat's median: a burst of machine load that hits one repeat of a
    # variant does not move it (pooling every step did: measured here while tests ran beside the benchmark)
    medians = {n: statistics.median(statistics.median(r) for r in times[n]) for n in names}
    floor = medians[FLOOR]
    rows = []
    for name in names:
        median = medians[name]
        rows.append(
            {
                "student": student,
                "teacher": teacher_name,
                "batch": batch,
                "variant": name,
                "image_size": IMAGE_SIZES[student],
                "repeats": args.repeats,
                "steps": args.steps,
                "warmup": args.warmup,
                "median_step_ms": 1000 * median,
                "ratio_to_plain_kd": median / floor,
                "steps_measured": sum(map(len, times[name])),
                "teacher_share": statistics.median(teacher_share[name]) if teacher_share[name] else None,
            }
        )
    return rows


def markdown(
    rows: list[dict[str, Any]], memory: dict[str, dict[str, dict[str, float]]], info: dict[str, Any]
) -> str:
    """The targets table (every setup in ``rows``) and one table per student (a column per teacher)."""
    setups = list(dict.fromkeys((r["student"], r["teacher"]) for r in rows))
    students = list(dict.fromkeys(student for student, _ in setups))
    params = {s: sum(p.numel() for p in STUDENTS[s]().parameters()) / 1e6 for s in students}
    teachers = list(dict.fromkeys(teacher for _, teacher in setups))
    teacher_params = {t: sum(p.numel() for p in TEACHERS[t]().parameters()) / 1e6 for t in teachers}
    device = f"GPU {info['gpu']}" if info["gpu"] else f"CPU only, {info['torch_threads']} torch threads"
    lines = [
        f"Machine: {info['cpu']} ({info['cores']} cores), {device}, torch {info['torch']}. Median step over "
        "interleaved repeats (median of repeat medians; repeats and steps per student below). Students: "
        + ", ".join(f"{s} ({p:.2f} M params, {IMAGE_SIZES[s]} px)" for s, p in params.items())
        + "; teachers: "
        + ", ".join(f"{t} ({p:.2f} M)" for t, p in teacher_params.items())
        + ". Memory: extra "
        + ("CUDA memory allocated" if info["gpu"] else "peak RSS")
        + " during training over the idle trainer (resnet_demo teacher; fresh process per variant).",
        "",
        "| target (ratio to plain KD) | limit | " + " | ".join(f"{s} + {t}" for s, t in setups) + " |",
        "|---|---|" + "---|" * len(setups),
    ]
    by_key = {(r["student"], r["teacher"], r["variant"]): r for r in rows}
    for what, variant, limit in TARGETS:
        cells = []
        for student, teacher in setups:
            row = by_key.get((student, teacher, variant))
            ratio = None if row is None else row["ratio_to_plain_kd"]
            cells.append(
                "-" if ratio is None else f"{ratio:.2f}x {'met' if ratio <= limit else '**not met**'}"
            )
        lines.append(f"| {what} (`{variant}`) | <= {limit:.2f}x | " + " | ".join(cells) + " |")
    lines.append("")
    for student in students:
        own = [teacher for s, teacher in setups if s == student]
        names = list(dict.fromkeys(r["variant"] for r in rows if r["student"] == student))
        first = next(r for r in rows if r["student"] == student)
        header = " | ".join(f"{t}: ms, ratio, teacher share" for t in own)
        lines += [
            f"**{student}** (batch {first['batch']}, {first['image_size']} px; {first['repeats']} repeats x "
            f"{first['steps'] - first['warmup']} steps after {first['warmup']} warm-up)",
            "",
            f"| variant | {header} | extra memory MiB | state MiB |",
            "|---|" + "---|" * len(own) + "---|---|",
        ]
        for name in names:
            cells = []
            for teacher in own:
                row = by_key.get((student, teacher, name))
                if row is None:
                    cells.append("-")
                    continue
                share = "-" if row["teacher_share"] is None else f"{100 * row['teacher_share']:.0f}%"
                cells.append(f"{row['median_step_ms']:.0f}, **{row['ratio_to_plain_kd']:.2f}x**, {share}")
            mem = memory.get(student, {}).get(name)
            mem_cells = f"{mem['peak_mib']:.1f} | {mem['state_mib']:.2f}" if mem else "- | -"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {mem_cells} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--memory":
        print(json.dumps(measure_memory(*json.loads(sys.argv[2]))))
        return
    (args,) = HfArgumentParser((StepCostArguments,)).parse_args_into_dataclasses()
    results = Path(args.results_dir)
    saved_file = results / "step_cost.json"
    if args.render_only:
        saved = json.loads(saved_file.read_text())
        text = markdown(saved["rows"], saved["memory"], saved["machine"])
        (results / "step_cost.md").write_text(text)
        print(text)
        return
    info = machine()
    print("machine:", json.dumps(info))
    setups = [tuple(setup.split("+")) for setup in args.setups]
    rows: list[dict[str, Any]] = []
    memory: dict[str, dict[str, dict[str, float]]] = {}
    if args.merge and saved_file.is_file():
        saved = json.loads(saved_file.read_text())
        rows = [r for r in saved["rows"] if (r["student"], r["teacher"]) not in setups]
        # rows measured before per-row settings were recorded: the run's settings
        for row in rows:
            row.setdefault("image_size", IMAGE_SIZES[row["student"]])
            for key in ("repeats", "steps", "warmup"):
                row.setdefault(key, saved["settings"][key])
        kept_students = {r["student"] for r in rows}
        memory = {s: m for s, m in saved["memory"].items() if s in kept_students}
    for student in dict.fromkeys(student for student, _ in setups):
        wanted = STUDENT_VARIANTS[student]
        names = [n for n in (wanted or variants()) if not args.only or n in args.only]
        for teacher in [t for s, t in setups if s == student]:
            started = time.perf_counter()
            rows += time_setup(student, teacher, names, args)
            print(f"timed {student} x {teacher}: {time.perf_counter() - started:.0f} s", flush=True)
        batch = args.batch_of(student)
        memory[student] = {n: memory_in_fresh_process(n, student, args.memory_steps, batch) for n in names}
        print(f"memory of {student}: done", flush=True)
    order = {setup: i for i, setup in enumerate(SETUPS)}
    rows.sort(key=lambda r: order[f"{r['student']}+{r['teacher']}"])  # stable: variants keep their order
    results.mkdir(parents=True, exist_ok=True)
    saved_file.write_text(
        json.dumps({"machine": info, "settings": vars(args), "rows": rows, "memory": memory}, indent=2)
    )
    text = markdown(rows, memory, info)
    (results / "step_cost.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
