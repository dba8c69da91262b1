"""Step cost of every trade-off method as a ratio to plain weighted-sum KD (one backward).

Same student, teacher and batch for every method (the digits demo's ViT student and ResNet teacher,
on random pixels, which cost the same as real ones). Methods are interleaved: each repeat runs a
short training of every method in turn, so machine noise hits all alike; the per-step time is
measured by a callback between ``on_step_begin`` and ``on_step_end`` (forward, backward, pi,
optimizer step, look-ahead), warm-up steps dropped, median over all repeats.
Peak memory is the resident set size of a fresh process per method (``ru_maxrss`` after the
steps, minus the same figure for a process that only built the models): a rough CPU figure.

Writes ``benchmarks/results/step_cost.json`` and ``step_cost.md`` (quoted by the README).
Run: ``python benchmarks/step_cost.py [--repeats 5 --steps 12]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Array3D, ClassLabel, Dataset, Features
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_dtokd import DTOKDConfig, DTOKDTrainer
from hf_dtokd.demo import build_student, build_teacher

RESULTS = Path(__file__).parent / "results"
METHODS = ("fixed", "dto", "dto_amortized", "no_kd")
LABELS = [str(i) for i in range(10)]


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.durations: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.durations.append(time.perf_counter() - self._start)


def dataset(n: int, size: int = 32) -> Dataset:
    rng = np.random.default_rng(0)
    features = Features(
        {"pixel_values": Array3D((3, size, size), "float32"), "labels": ClassLabel(num_classes=10)}
    )
    return Dataset.from_dict(
        {
            "pixel_values": rng.standard_normal((n, 3, size, size)).astype(np.float32),
            "labels": rng.integers(0, 10, n),
        },
        features=features,
    ).with_format("torch")


def run(method: str, steps: int, batch: int, teacher) -> list[float]:
    timer = StepTimer()
    common = dict(
        output_dir="/tmp/hf_dtokd_step_cost", use_cpu=True, per_device_train_batch_size=batch, max_steps=steps,
        save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=10_000, seed=0,
    )  # fmt: skip
    student = build_student(0, LABELS)
    data = dataset(batch * steps)
    if method == "no_kd":
        trainer = Trainer(
            model=student, args=TrainingArguments(**common), train_dataset=data, callbacks=[timer]
        )
    else:
        config = DTOKDConfig(**common, method=method)
        trainer = DTOKDTrainer(
            model=student, teacher_model=teacher, args=config, train_dataset=data, callbacks=[timer]
        )
    trainer.train()
    return timer.durations


def peak_rss_mib(method: str, steps: int, batch: int) -> float:
    """ru_maxrss of a child process that runs ``method`` (or only builds the models for 'baseline')."""
    code = (
        f"import resource, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import step_cost as s;"
        f"from hf_dtokd.demo import build_teacher; t = build_teacher(s.LABELS); m = {method!r};"
        f"s.run(m, {steps}, {batch}, t) if m != 'baseline' else (s.build_student(0, s.LABELS), s.dataset({batch * steps}));"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1]) / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()

    teacher = build_teacher(LABELS)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for _ in range(args.repeats):
        for method in METHODS:
            times[method] += run(method, args.steps, args.batch, teacher)[args.warmup :]
    baseline_rss = peak_rss_mib("baseline", args.steps, args.batch)
    rows = []
    floor = statistics.median(times["fixed"])
    for method in METHODS:
        median = statistics.median(times[method])
        rows.append(
            {
                "method": method,
                "median_step_ms": 1000 * median,
                "ratio_to_plain_kd": median / floor,
                "steps_measured": len(times[method]),
                "peak_rss_mib": (rss := peak_rss_mib(method, args.steps, args.batch)),
                "peak_rss_over_models_mib": rss - baseline_rss,
            }
        )
    machine = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "device": "cpu",
    }
    student_params = sum(p.numel() for p in build_student(0, LABELS).parameters())
    setup = {
        "student": f"ViT 4x64, 32 px ({student_params / 1e6:.2f} M params)",
        "teacher": "ResNet 32-64-128, 24 px (fed converted 32 px pixels)",
        "batch": args.batch,
        "repeats": args.repeats,
        "steps_per_repeat": args.steps,
        "warmup_dropped": args.warmup,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "step_cost.json").write_text(
        json.dumps({"machine": machine, "setup": setup, "rows": rows}, indent=2)
    )
    lines = [
        f"Machine: {machine['cpu']}, {machine['threads']} threads, torch {machine['torch']}, CPU only. "
        f"Student {setup['student']}, teacher {setup['teacher']}, batch {args.batch}; median of "
        f"{rows[0]['steps_measured']} steps over {args.repeats} interleaved repeats.",
        "",
        "| method | median step (ms) | ratio to plain KD (`fixed`) | peak RSS (MiB) | peak RSS over a process that only built the models (MiB) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['method']} | {r['median_step_ms']:.1f} | {r['ratio_to_plain_kd']:.2f}x | {r['peak_rss_mib']:.1f} | {r['peak_rss_over_models_mib']:.1f} |"
        for r in rows
    ]
    (RESULTS / "step_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nmax RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
