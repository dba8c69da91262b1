"""Regenerate the generated blocks of the README and the docs pages from result files and from DTOKDConfig.

Blocks are delimited by ``<!-- name:start -->`` / ``<!-- name:end -->`` and filled wherever they are
(README.md and docs/*.md):

* ``demo`` (README): the table printed by the digits demo (``python -m hf_dtokd.demos.digits``), copied
  with its JSON and plot into ``docs/results/``;
* ``digits-signals`` (signals page): the digits demo's opt-in signal runs, from ``--signals-demo-dir``;
* ``detection-demo`` (detection page): the table printed by ``python -m hf_dtokd.demos.shapes``, copied
  with its JSON and plot into ``docs/results/``;
* ``detection-first-teacher`` (detection page): the first test table of that demo, whose teacher was not kept,
  from its committed copy ``docs/results/shapes_first_teacher_results.md``;
* ``detection-earlier-demo``, ``detection-earlier-demo-seeds-2-3`` (detection page): the earlier detection
  demo's tables (800 student images, class and box KD), from their committed copies in ``docs/results/``, and
  ``detection-earlier-demo-pooled``: their students summarised together (the demo's own ``summarise`` and
  ``format_table``, so every seed pairs across the methods);
* ``segmentation-demo`` (segmentation page): the table printed by ``python -m hf_dtokd.demos.segmentation``,
  copied with its JSON and plot into ``docs/results/``;
* ``step-cost`` (benchmarks page): ``benchmarks/results/step_cost.md``;
* ``compare`` (benchmarks and compare-methods pages): ``benchmarks/results/compare_methods.md``, its run
  time in the sentence before it, and its plot copied into ``docs/results/``;
* ``compare-vit`` (compare-methods page): the earlier regime's table and plot,
  ``benchmarks/results/vit_labelled_only/``;
* ``compare-signals`` (signals page): ``benchmarks/results/signal_rows/compare_methods.md``;
* ``compare-paper`` (benchmarks and compare-methods pages): ``benchmarks/results/paper_regime/compare_methods.md``,
  the paper-regime benchmark, its plot copied into ``docs/results/``;
* ``compare-paper-selection`` (compare-methods page): one row per validation pilot that fixed the paper
  regime's settings, from ``benchmarks/results/paper_regime/selection/*.json``;
* ``sharded-equivalence`` (multi-GPU page): ``benchmarks/results/sharded_equivalence.md``, how far FSDP2 and
  DeepSpeed on 2 CPU processes end from one process;
* ``dot-sweep`` (compare-methods page): ``benchmarks/results/paper_regime/dot_sweep/compare_methods.md``, DOT's
  momentum gap swept in the paper regime, and ``dot-update-size``: the size of the update DOT wrote each step;
* ``compare-converged`` (compare-methods page): ``benchmarks/results/paper_regime/converged/compare_methods.md``,
  the converged paper-regime table, or ``partial.md`` (``--finished_only``) while it is in progress, its plot
  copied into ``docs/results/compare_methods_converged.png``;
* ``compare-converged-compact`` (README and benchmarks page): its headline columns, from the same run's JSON;
* ``dot-beta`` and ``dot-beta-update-size`` (compare-methods page): ``benchmarks/results/paper_regime/dot_beta/``,
  which part of the gap does it: one momentum at each branch's beta1, and the branches' second moment;
* ``ema-spread`` (compare-methods page): ``benchmarks/results/paper_regime/converged_ema/spread.md``
  (``benchmarks/ema_spread.py``), the converged regime's spread with and without a moving average of the weights;
* ``config`` (configuration page): the DTOKDConfig fields with their defaults and help text.

Run: ``python docs/update_readme.py [--demo-dir outputs/digits] [--detection-demo-dir outputs/shapes]
[--segmentation-demo-dir outputs/segmentation] [--allow-fewer-runs]``. A demo folder holding fewer student runs than
the committed results (a smoke test, one seed of a many-seed table) is reported and left out unless
``--allow-fewer-runs``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import statistics
from pathlib import Path

from transformers import TrainingArguments

from hf_dtokd import DTOKDConfig

ROOT = Path(__file__).resolve().parents[1]


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"no <!-- {name}:start --> ... <!-- {name}:end --> block")
    return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


class Pages:
    """README.md and docs/*.md, read once, written back when changed."""

    def __init__(self) -> None:
        self.paths = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        self.texts = {path: path.read_text() for path in self.paths}

    def fill(self, name: str, body: str) -> None:
        """Every page holding the block ``name`` gets ``body``; a block found nowhere is an error."""
        holders = [path for path, text in self.texts.items() if f"<!-- {name}:start -->" in text]
        if not holders:
            raise ValueError(f"no page holds a <!-- {name}:start --> ... <!-- {name}:end --> block")
        for path in holders:
            self.texts[path] = replace_block(self.texts[path], name, body)

    def sub(self, pattern: str, replacement: str) -> None:
        for path, text in self.texts.items():
            self.texts[path] = re.sub(pattern, replacement, text)

    def write(self) -> None:
        for path, text in self.texts.items():
            if path.read_text() != text:
                path.write_text(text)
                print(f"updated {path.relative_to(ROOT)}")


def config_table() -> str:
    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    rows = ["| field | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(DTOKDConfig):
        if f.name in inherited:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        choices = f.metadata.get("choices")
        meaning = f.metadata["help"] + (
            f" One of: {', '.join(f'`{c}`' for c in choices)}." if choices else ""
        )
        rows.append(f"| `{f.name}` | `{default!r}` | {meaning.replace('|', '/')} |")
    return "\n".join(rows)


def paper_compact_table(report: dict) -> str:
    """README's short form of the paper-regime table: top-1, paired difference, per-step conflict, weights (a
    row with more pairs than the rest, ``--row_seeds``, says how many; a benchmark in progress says so first;
    the rows of an experimental method, in a table of their own after the comparison)."""
    common = report.get("common_pairs", report["table"][0]["pairs"])
    rows = []
    if report.get("pairs_finished", 0) < report.get("pairs_planned", 0):
        rows += [
            f"**In progress: {report['pairs_finished']} of {report['pairs_planned']} fold / seed pairs finished by "
            "every row.**",
            "",
        ]
    header = [
        f"| row | test top-1 % ({common} pairs) | vs best fixed alpha (pp +- SE) | steps in conflict | "
        "median weight on distill |",
        "|---|---|---|---|---|",
    ]

    def line(r: dict) -> str:
        pairs = "" if r["pairs"] == common else f" ({r['pairs']} pairs)"
        diff = (
            "best fixed"
            if r["row"] == r["baseline"]
            else f"{100 * r['diff_to_baseline']:+.2f} +- {100 * r['diff_se']:.2f}"
        )
        conflict = "-" if r["conflict_rate"] is None else f"{100 * r['conflict_rate']:.1f} %"
        return (
            f"| {r['row']} | {100 * r['top1_mean']:.1f} +- {100 * r['top1_std']:.1f}{pairs} | {diff} | {conflict} | "
            f"{r['median_weight_distill']:.3f} |"
        )

    experiments = [r for r in report["table"] if r.get("experiment")]
    rows += header + [line(r) for r in report["table"] if not r.get("experiment")]
    if experiments:
        rows += ["", "Experiments, not methods to compare against:", "", *header, *map(line, experiments)]
    return "\n".join(rows)


def selection_table(folder: Path) -> str:
    """The validation pilots: their settings and validation top-1 per row (mean +- std over their runs)."""
    rows = [
        "| pilot | lr | T | student | RandAugment | Mixup / CutMix p | steps | rows: validation top-1 % (mean +- std) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(folder.glob("*.json")):
        report = json.loads(path.read_text())
        a = report["arguments"]
        student = f"ViT {a['student_layers']}x{a['student_width']} p{a['student_patch']}"
        if a.get("gram_parameters", "all") != "all":
            student += f", gram_parameters={a['gram_parameters']}"
        scores = "; ".join(
            f"{r['row']} {100 * r['top1_mean']:.1f} +- {100 * r['top1_std']:.1f}" for r in report["table"]
        )
        pairs = report["table"][0]["pairs"]
        rows.append(
            f"| {path.stem} | {a['learning_rate']} | {a['temperature']} | {student} | {a['rand_augment'] or 'none'} | "
            f"{a['mixup_prob']} | {a['max_steps']} | {scores} ({pairs} runs each) |"
        )
    return "\n".join(rows)


def quote_demo(pages: Pages, folder: Path, prefix: str, block: str, allow_fewer_runs: bool = False) -> None:
    """Copy a demo's results (table, JSON, plot) into docs/results/<prefix>_* and its table into ``block``.

    A folder with fewer student runs than the committed results (a smoke test, one seed of a many-seed table) is
    not quoted unless ``allow_fewer_runs``: it would replace the committed table without a word."""
    if not (folder / "results.md").is_file():
        return
    results = ROOT / "docs" / "results"
    report = json.loads((folder / "results.json").read_text())
    committed = results / f"{prefix}_results.json"
    if committed.is_file() and not allow_fewer_runs:
        kept = len(json.loads(committed.read_text()).get("students", []))
        if len(report.get("students", [])) < kept:
            print(
                f"not quoting {folder}: {len(report.get('students', []))} student runs against the {kept} of the "
                f"committed {committed.relative_to(ROOT)} (pass --allow-fewer-runs to replace it)"
            )
            return
    results.mkdir(parents=True, exist_ok=True)
    for name in ("results.md", "tradeoff.png"):
        shutil.copy(folder / name, results / f"{prefix}_{name}")
    if prefix in PER_STEP_IN_RUN_FILES:
        for student in report.get("students", []):
            student.pop("log_history", None)
            student.pop("step_trace", None)
        report["per_step"] = PER_STEP_IN_RUN_FILES[prefix]
    (results / f"{prefix}_results.json").write_text(json.dumps(report, indent=2))
    pages.fill(block, (folder / "results.md").read_text())


#: demos whose runs keep their log history and per-step trace in committed run files: the docs' copy of the
#: results leaves them out (30 runs made it 13 MB) and says where they are
PER_STEP_IN_RUN_FILES = {
    "shapes_demo": "each run's log history and per-step weights are in benchmarks/results/detection_demo/runs"
}


#: the earlier detection demo's values of the fields added or given new defaults since it ran (its JSON records only
#: the fields of its time)
EARLIER_DETECTION_DEFAULTS = {
    "teacher_train_size": None,
    "train_size": 800,
    "validation_size": 200,
    "student_width": 16,
    "student_d_model": 48,
    "token_projector": "none",
    "test_size": 0,
    "evaluate_on": "validation",
    "seeds": 2,
    "student_backbone": "random",
    "unlabelled_size": 0,
}


def earlier_detection_demo(pages: Pages) -> None:
    """The earlier detection demo's two tables (seeds 0-1 and 2-3) and their students pooled over the four seeds
    (same teacher and settings, checked), from the committed copies in docs/results."""
    from hf_dtokd.demos.shapes import DetectionDemoArguments, format_table, summarise

    results = ROOT / "docs" / "results"
    parts = ("shapes_earlier_demo", "shapes_earlier_demo_seeds_2_3")
    if not all((results / f"{part}_results.json").is_file() for part in parts):
        return
    reports = [json.loads((results / f"{part}_results.json").read_text()) for part in parts]
    for block, report in zip(("detection-earlier-demo", "detection-earlier-demo-seeds-2-3"), reports):
        demo = DetectionDemoArguments(**{**EARLIER_DETECTION_DEFAULTS, **report["arguments"]})
        rows = summarise(report["students"], report["teacher"]["map"])
        pages.fill(block, format_table(report["teacher"], rows, demo))  # today's columns, from the runs
    ignored = ("output_dir", "seed", "seeds", "workers")
    settings = [{k: v for k, v in r["arguments"].items() if k not in ignored} for r in reports]
    if any(s != settings[0] for s in settings) or len({r["teacher"]["map"] for r in reports}) != 1:
        raise ValueError(f"the detection runs in {parts} differ in settings or teacher: not pooled")
    students = [student for report in reports for student in report["students"]]
    if len({(s["run"], s["seed"]) for s in students}) != len(students):
        raise ValueError(f"the detection runs in {parts} repeat a seed: not pooled")
    arguments = {**EARLIER_DETECTION_DEFAULTS, **reports[0]["arguments"]}
    demo = DetectionDemoArguments(**{**arguments, "seeds": len({s["seed"] for s in students})})
    rows = summarise(students, reports[0]["teacher"]["map"])
    pages.fill("detection-earlier-demo-pooled", format_table(reports[0]["teacher"], rows, demo))


def dot_update_table(report: dict) -> str:
    """Per DOT row of a sweep: the update direction's per-step RMS (median over steps, then over runs) and its
    largest entry (largest over steps, median over runs), from each run's ``update_size``."""
    rows: dict[str, list[dict]] = {}
    for run in report["runs"]:
        if "update_size" in run:
            rows.setdefault(run["row"], []).append(run["update_size"])
    lines = [
        "| row | update RMS per step (median) | largest update entry per run (median over runs) | runs |",
        "|---|---|---|---|",
    ]
    for row, sizes in rows.items():
        rms = statistics.median(statistics.median(s["rms"]) for s in sizes)
        largest = statistics.median(max(s["max"]) for s in sizes)
        lines.append(f"| {row} | {rms:.3f} | {largest:.2f} | {len(sizes)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--demo-dir", default=str(ROOT / "outputs" / "digits"))
    parser.add_argument("--detection-demo-dir", default=str(ROOT / "outputs" / "shapes"))
    parser.add_argument("--signals-demo-dir", default=str(ROOT / "outputs" / "digits_signals"))
    parser.add_argument("--segmentation-demo-dir", default=str(ROOT / "outputs" / "segmentation"))
    parser.add_argument(
        "--allow-fewer-runs",
        action="store_true",
        help="quote a demo folder even when it holds fewer student runs than the committed results",
    )
    args = parser.parse_args()
    pages = Pages()
    for folder, prefix, block in (
        (args.demo_dir, "digits_demo", "demo"),
        (args.signals_demo_dir, "digits_signals", "digits-signals"),
        (args.detection_demo_dir, "shapes_demo", "detection-demo"),
        (args.segmentation_demo_dir, "segmentation_demo", "segmentation-demo"),
    ):
        quote_demo(pages, Path(folder), prefix, block, args.allow_fewer_runs)
    first_teacher = ROOT / "docs" / "results" / "shapes_first_teacher_results.md"
    if first_teacher.is_file():
        pages.fill("detection-first-teacher", first_teacher.read_text())
    earlier_detection_demo(pages)
    benchmarks = ROOT / "benchmarks" / "results"
    if (benchmarks / "step_cost.md").is_file():
        pages.fill("step-cost", (benchmarks / "step_cost.md").read_text())
    compare = benchmarks / "compare_methods.md"
    if compare.is_file():
        pages.fill("compare", compare.read_text())
        shutil.copy(compare.with_suffix(".png"), ROOT / "docs" / "results" / "compare_methods.png")
        report = json.loads(compare.with_suffix(".json").read_text())
        # the runs' own wall times (a resumed benchmark's total_seconds covers only its last part)
        steps = report["arguments"]["max_steps"]
        minutes = (
            sum(r["seconds_per_step"] * steps for r in report["runs"]) / report["arguments"]["workers"] / 60
        )
        pages.sub(
            r"\(about \S+ minutes on 2 cores\) runs every method",
            f"(about {minutes:.0f} minutes on 2 cores) runs every method",
        )
    earlier = benchmarks / "vit_labelled_only" / "compare_methods.md"
    if earlier.is_file():
        pages.fill("compare-vit", earlier.read_text())
        shutil.copy(
            earlier.with_suffix(".png"), ROOT / "docs" / "results" / "compare_methods_vit_labelled_only.png"
        )
    signal_rows = benchmarks / "signal_rows" / "compare_methods.md"
    if signal_rows.is_file():
        pages.fill("compare-signals", signal_rows.read_text())
    paper = benchmarks / "paper_regime" / "compare_methods.md"
    if paper.is_file():
        pages.fill("compare-paper", paper.read_text())
        shutil.copy(paper.with_suffix(".png"), ROOT / "docs" / "results" / "compare_methods_paper.png")
    selection = benchmarks / "paper_regime" / "selection"
    if selection.is_dir():
        pages.fill("compare-paper-selection", selection_table(selection))
    dot_sweep = benchmarks / "paper_regime" / "dot_sweep" / "compare_methods.md"
    if dot_sweep.is_file():
        pages.fill("dot-sweep", dot_sweep.read_text())
        pages.fill(
            "dot-update-size", dot_update_table(json.loads(dot_sweep.with_suffix(".json").read_text()))
        )
    # the converged comparison: its full table once every run exists, until then the interim one (its first line
    # says how many fold / seed pairs it covers)
    converged = benchmarks / "paper_regime" / "converged"
    for name in ("compare_methods", "partial"):
        if (converged / f"{name}.md").is_file():
            pages.fill("compare-converged", (converged / f"{name}.md").read_text())
            pages.fill(
                "compare-converged-compact",
                paper_compact_table(json.loads((converged / f"{name}.json").read_text())),
            )
            shutil.copy(
                converged / f"{name}.png", ROOT / "docs" / "results" / "compare_methods_converged.png"
            )
            break
    dot_beta = benchmarks / "paper_regime" / "dot_beta" / "compare_methods.md"
    if dot_beta.is_file():
        pages.fill("dot-beta", dot_beta.read_text())
        pages.fill(
            "dot-beta-update-size", dot_update_table(json.loads(dot_beta.with_suffix(".json").read_text()))
        )
    ema = benchmarks / "paper_regime" / "converged_ema" / "spread.md"
    if ema.is_file():
        pages.fill("ema-spread", ema.read_text())
    sharded = benchmarks / "sharded_equivalence.md"
    if sharded.is_file():
        pages.fill("sharded-equivalence", sharded.read_text())
    pages.fill("config", config_table())
    pages.write()


if __name__ == "__main__":
    main()
