"""What the demos share: runs grouped by seed, paired differences with their SE, the per-step figures of the
trade-off pooled over seeds, and each run's result kept in its own file so that a stopped demo resumes."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import multiprocessing
import os
import platform
import statistics
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

Job = tuple[str, int]  # (run, seed)


def parse_row_seeds(entries: Sequence[str], rows: Sequence[str], flag: str = "runs") -> dict[str, int]:
    """``--row_seeds`` entries ``ROW=N`` (a named row's own seed count) as ``{row: N}``: each N >= 1, each row
    among ``rows`` (the ``--<flag>`` the demo runs) and named once."""
    counts: dict[str, int] = {}
    for entry in entries:
        row, sep, count = entry.partition("=")
        if not sep or not count.strip().isdigit() or int(count) < 1:
            raise ValueError(f"row_seeds entries are RUN=N with N >= 1 (e.g. fixed_0.1=5), got {entry!r}")
        if row not in rows:
            raise ValueError(
                f"row_seeds names {row!r}, which is not in {flag} ({', '.join(rows)}); add it to --{flag} or drop "
                "the entry"
            )
        if row in counts:
            raise ValueError(f"row_seeds names {row!r} twice ({list(entries)}); keep one entry per run")
        counts[row] = int(count)
    return counts


def runs_by_seed(results: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """``{run: {seed: result}}`` in the order the runs first appear."""
    by_run: dict[str, dict[int, dict[str, Any]]] = {}
    for r in results:
        by_run.setdefault(r["run"], {})[r["seed"]] = r
    return by_run


def paired_difference(
    seeds: dict[int, dict[str, Any]], reference: dict[int, dict[str, Any]], metric: str
) -> tuple[float | None, float | None]:
    """Mean over the shared seeds of ``metric - reference's metric``, and its SE (None below two pairs)."""
    paired = [seeds[s][metric] - reference[s][metric] for s in sorted(seeds) if s in reference]
    if not paired:
        return None, None
    se = statistics.stdev(paired) / math.sqrt(len(paired)) if len(paired) > 1 else None
    return statistics.fmean(paired), se


def add_paired_differences(
    row: dict[str, Any],
    run: str,
    by_run: dict[str, dict[int, dict[str, Any]]],
    metric: str,
    references: tuple[str, ...] = ("no_kd", "fixed"),
) -> None:
    """``row["diff_to_<reference>"]`` and its ``_se`` for each reference run (None against itself or when absent)."""
    for reference in references:
        other = by_run.get(reference, {}) if run != reference else {}
        row[f"diff_to_{reference}"], row[f"diff_to_{reference}_se"] = paired_difference(
            by_run[run], other, metric
        )


def signed_points(value: float | None, se: float | None) -> str:
    """A difference of fractions as signed percentage points, with its SE when there is one."""
    if value is None:
        return "-"
    return f"{100 * value:+.1f}" + ("" if se is None else f" +- {100 * se:.1f}")


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def vertex_share(trace: dict[str, Any], tolerance: float = 1e-3) -> float | None:
    """Share of optimizer steps whose applied distillation weight is within ``tolerance`` of 0 or 1 (a vertex of
    the simplex: one objective alone)."""
    weights = trace.get("weight_distill", {}).get("value", [])
    if not weights:
        return None
    return sum(w <= tolerance or w >= 1 - tolerance for w in weights) / len(weights)


def per_step_summary(traces: list[dict[str, Any]]) -> dict[str, float | None]:
    """From per-step traces (one per seed, pooled): the share of optimizer steps whose distillation and task
    gradients conflict (cosine < 0; over all steps and each run's last quarter), the median raw-loss weights
    applied to the two losses and the median step-to-step change of the distillation weight."""
    cosines, late, weights, task_weights, changes = [], [], [], [], []
    for points in traces:
        run = [c for c in points.get("grad_cos", {}).get("value", []) if not math.isnan(c)]
        cosines += run
        late += run[len(run) * 3 // 4 :]
        applied = points.get("weight_distill", {}).get("value", [])
        weights += applied
        task_weights += points.get("weight_task", {}).get("value", [])
        changes += [abs(b - a) for a, b in zip(applied, applied[1:])]
    return {
        "conflict_rate": sum(c < 0 for c in cosines) / len(cosines) if cosines else None,
        "conflict_rate_last_quarter": sum(c < 0 for c in late) / len(late) if late else None,
        "median_weight_distill": statistics.median(weights) if weights else None,
        "median_weight_task": statistics.median(task_weights) if task_weights else None,
        # how far the applied weight moves from one optimizer step to the next (0 for a fixed alpha)
        "median_weight_change": statistics.median(changes) if changes else None,
    }


def weights_fingerprint(folder: str | Path) -> str:
    """The first 16 hex digits of the SHA-256 of a saved model's ``model.safetensors``.

    A run records the fingerprints of the teacher (and pretrained backbone) it was trained against, and is reused
    and paired only against the same weights: the same settings train other weights on another machine (the float
    summation order changes a training run: the detection demo's teacher, trained again on a later machine,
    scored 48.7 mAP against 58.1), and runs trained against different teachers must not be paired."""
    digest = hashlib.sha256((Path(folder) / "model.safetensors").read_bytes()).hexdigest()
    return digest[:16]


def cpu_name() -> str:
    """The CPU's model name (from ``/proc/cpuinfo`` on Linux, else ``platform.processor()``) and the instruction
    set torch's CPU kernels use on it, recorded with each run: a detector's training differs from one CPU to
    another (float summation order), so a table pooled over machines says which run came from which. The model
    name alone does not tell machines apart (two cloud CPUs a factor 2 apart in speed both report "AMD EPYC")."""
    import torch  # here, not at the top: the rest of this module is plain Python

    name = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                name = line.partition(":")[2].strip()
                break
    name = name or platform.processor() or platform.machine() or "unknown"
    return f"{name} (torch CPU kernels: {torch.backends.cpu.get_cpu_capability()})"


def load_run(path: Path, settings: dict[str, Any], unread: Collection[str] = ()) -> dict[str, Any] | None:
    """A run's recorded result, when it was trained with these ``settings`` (else None: it is trained again);
    ``unread`` names settings the run does not read, left out of the comparison whether recorded or not. A path
    ending in ``.gz`` is gzipped JSON (run files meant to be committed)."""
    if not path.is_file():
        return None
    data = path.read_bytes()
    recorded = json.loads(gzip.decompress(data) if path.suffix == ".gz" else data)
    kept = {k: v for k, v in (recorded.get("settings") or {}).items() if k not in unread}
    return recorded["result"] if kept == {k: v for k, v in settings.items() if k not in unread} else None


def save_run(path: Path, settings: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """Write a finished run's result beside its settings (atomically: a stopped demo never leaves half a file),
    gzipped when the path ends in ``.gz``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    data = json.dumps({"settings": settings, "result": result}).encode()
    # mtime=0: the same result gives the same bytes (a committed run file changes only when its result does)
    partial.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    partial.replace(path)
    return result


def train_jobs(
    jobs: Sequence[Job],
    load: Callable[[str, int], dict[str, Any] | None],
    save: Callable[[dict[str, Any]], dict[str, Any]],
    workers: int,
    train_here: Callable[[str, int], dict[str, Any]],
    worker: Callable[..., dict[str, Any]],
    worker_args: tuple[Any, ...] = (),
) -> list[dict[str, Any]]:
    """Every ``(run, seed)`` job: its recorded result when ``load`` finds one, else trained, here one after another
    (``workers == 1``) or ``workers`` at a time in spawned processes (``worker(run, seed, *worker_args, threads)``,
    each with cores / workers threads), each result saved as it finishes so that a stopped demo resumes.

    Small models use 2 cores poorly (a detection run with 2 threads took 216 s, two 1-thread runs side by side
    230 s each), so independent runs side by side nearly halve a demo's time; their results are the same as in
    sequence up to the threads' float summation order."""
    done = {job: found for job in jobs if (found := load(*job)) is not None}
    if done:
        print(f"{len(done)} of {len(jobs)} runs already finished with these settings: reused", flush=True)
    todo = [job for job in jobs if job not in done]
    if workers == 1:
        for job in todo:
            done[job] = save(train_here(*job))
        return [done[job] for job in jobs]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // workers)
    context = multiprocessing.get_context("spawn")  # fork would copy this process's torch thread pools
    # seed by seed, so that a stopped demo has whole seeds (pairs) to show; within a seed the DTO-KD runs (two
    # backward passes a step, the longest) start first, so the workers end together
    order = sorted(todo, key=lambda job: (job[1], not job[0].startswith("dto")))
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(worker, *job, *worker_args, threads): job for job in order}
        for future in as_completed(futures):
            done[futures[future]] = save(future.result())
    return [done[job] for job in jobs]


def plotted_runs(results: list[dict[str, Any]], first_seed: int) -> list[dict[str, Any]]:
    """The runs the trade-off plot draws: the first seed of every balanced row (one colour per row; the table
    pools the seeds). One line per run of every seed would bury the panels under their legends, and fixed
    weights have no trade-off to draw."""
    return [r for r in results if r["method"] != "fixed" and r["seed"] == first_seed]
