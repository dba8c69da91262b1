"""Does scoring the moving average of the student's weights reduce the spread of a paper-regime comparison?

Reads two ``--runs_dir`` folders of ``compare_methods.py --regime paper`` (one without ``--ema_decay``, one with)
and compares, over the fold / seed pairs both hold for every row (trained against the same teachers: refused
otherwise), each row's spread across runs (std of the test top-1 and of the final validation top-1), the paired
gain of the average over the plain weights, and the paired difference of each row to the baseline row (its
standard error is what a comparison can resolve). Writes ``<output>.json`` and ``<output>.md``.

    python benchmarks/ema_spread.py --plain_runs benchmarks/results/paper_regime/converged/runs \\
        --ema_runs benchmarks/results/paper_regime/converged_ema/runs --rows fixed_0.5 dto \\
        --output benchmarks/results/paper_regime/converged_ema/spread
"""

from __future__ import annotations

import gzip
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser


@dataclass
class SpreadArguments:
    plain_runs: str = field(metadata={"help": "--runs_dir of the runs without a moving average."})
    ema_runs: str = field(metadata={"help": "--runs_dir of the same rows with --ema_decay."})
    rows: list[str] = field(
        default_factory=lambda: ["fixed_0.5", "dto"], metadata={"help": "Rows to compare."}
    )
    output: str = field(
        default="benchmarks/results/paper_regime/converged_ema/spread",
        metadata={"help": "Path of the report without its suffix (.json and .md are written)."},
    )

    def __post_init__(self) -> None:
        if len(self.rows) < 2:
            raise ValueError(f"rows needs the baseline and at least one row to pair with it, got {self.rows}")


def load_runs(folder: Path, rows: list[str]) -> dict[tuple[str, int, int], dict[str, Any]]:
    """The recorded runs of ``rows`` in a runs folder, by ``(row, fold, seed)``."""
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder of runs (compare_methods.py --runs_dir)")
    runs = {}
    for path in sorted(folder.glob("*.json.gz")):
        run = json.loads(gzip.decompress(path.read_bytes()))
        if run["row"] in rows:
            runs[(run["row"], run["fold"], run["seed"])] = run
    return runs


def mean_se(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def spread_report(
    plain: dict[tuple[str, int, int], dict[str, Any]],
    averaged: dict[tuple[str, int, int], dict[str, Any]],
    rows: list[str],
) -> dict[str, Any]:
    """Per row and per pair against ``rows[0]`` (the baseline): spreads and paired differences, plain and averaged,
    over the pairs both folders hold for every row."""
    pairs = sorted(
        {(fold, seed) for (_, fold, seed) in averaged} & {(fold, seed) for (_, fold, seed) in plain}
    )
    pairs = [p for p in pairs if all((row, *p) in plain and (row, *p) in averaged for row in rows)]
    if len(pairs) < 2:
        raise ValueError(
            f"the two folders share {len(pairs)} fold / seed pairs of every row in {rows}; need 2 or more"
        )
    other = [
        p
        for p in pairs
        for row in rows
        if plain[(row, *p)]["teacher_weights"] != averaged[(row, *p)]["teacher_weights"]
    ]
    if other:
        raise ValueError(
            f"fold / seed pairs {sorted(set(other))} were trained against other teachers in the two folders"
        )

    def top1(runs: dict, row: str, p: tuple[int, int]) -> float:
        return runs[(row, *p)]["top1"]

    def validation(runs: dict, row: str, p: tuple[int, int]) -> float:
        return runs[(row, *p)]["curve"][-1][1]

    table = []
    for row in rows:
        gain = [top1(averaged, row, p) - top1(plain, row, p) for p in pairs]
        table.append(
            {
                "row": row,
                "test_plain": [top1(plain, row, p) for p in pairs],
                "test_ema": [top1(averaged, row, p) for p in pairs],
                "test_std_plain": statistics.stdev(top1(plain, row, p) for p in pairs),
                "test_std_ema": statistics.stdev(top1(averaged, row, p) for p in pairs),
                "validation_std_plain": statistics.stdev(validation(plain, row, p) for p in pairs),
                "validation_std_ema": statistics.stdev(validation(averaged, row, p) for p in pairs),
                "ema_gain": mean_se(gain),
                "ema_wins_losses": (sum(g > 0 for g in gain), sum(g < 0 for g in gain)),
            }
        )
    baseline = rows[0]
    differences = []
    for row in rows[1:]:
        figures = {"row": row, "baseline": baseline}
        for name, runs in (("plain", plain), ("ema", averaged)):
            diffs = [top1(runs, row, p) - top1(runs, baseline, p) for p in pairs]
            figures[name] = mean_se(diffs)
            figures[f"{name}_std"] = statistics.stdev(diffs)
        differences.append(figures)
    return {"pairs": [list(p) for p in pairs], "rows": table, "differences": differences}


def markdown(report: dict[str, Any], ema_decay: float) -> str:
    def pp(x: float) -> str:
        return f"{100 * x:.2f}"

    n = len(report["pairs"])
    lines = [
        f"| row | test top-1 %, plain weights (mean +- std, {n} runs) | moving average | average - plain (pp +- SE; "
        "wins / losses) | std of the final validation top-1, plain / average (pp) |",
        "|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        gain, se = r["ema_gain"]
        wins, losses = r["ema_wins_losses"]
        lines.append(
            f"| {r['row']} | {100 * statistics.fmean(r['test_plain']):.1f} +- {pp(r['test_std_plain'])} | "
            f"{100 * statistics.fmean(r['test_ema']):.1f} +- {pp(r['test_std_ema'])} | {100 * gain:+.2f} +- "
            f"{pp(se)} ({wins} / {losses}) | {pp(r['validation_std_plain'])} / {pp(r['validation_std_ema'])} |"
        )
    lines += [
        "",
        "| paired difference | plain weights (pp +- SE; std) | moving average (pp +- SE; std) |",
        "|---|---|---|",
    ]
    for d in report["differences"]:
        (plain, plain_se), (ema, ema_se) = d["plain"], d["ema"]
        lines.append(
            f"| {d['row']} - {d['baseline']} | {100 * plain:+.2f} +- {pp(plain_se)}; {pp(d['plain_std'])} | "
            f"{100 * ema:+.2f} +- {pp(ema_se)}; {pp(d['ema_std'])} |"
        )
    lines += [
        "",
        f"The same {n} fold / seed pairs and teachers, trained twice: plain weights, and their moving "
        f"average (decay {ema_decay}, timm's warm-up) evaluated and scored instead. Test top-1 on each fold's test split.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    (args,) = HfArgumentParser((SpreadArguments,)).parse_args_into_dataclasses(args=argv)
    plain = load_runs(Path(args.plain_runs), args.rows)
    averaged = load_runs(Path(args.ema_runs), args.rows)
    decays = {run["settings"].get("ema_decay") for run in averaged.values()}
    if None in decays or 0.0 in decays:
        raise ValueError(
            f"{args.ema_runs} holds runs without a moving average (--ema_decay); give the averaged runs"
        )
    if len(decays) != 1:
        raise ValueError(
            f"{args.ema_runs} holds runs of several decays {sorted(decays)}; give one decay's runs"
        )
    if any(run["settings"].get("ema_decay") for run in plain.values()):
        raise ValueError(f"{args.plain_runs} holds runs with a moving average; give the runs without one")
    report = spread_report(plain, averaged, args.rows)
    report["arguments"] = vars(args)
    (report["ema_decay"],) = decays
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(report, indent=2))
    table = markdown(report, report["ema_decay"])
    output.with_suffix(".md").write_text(table + "\n")
    print(table)
    return report


if __name__ == "__main__":
    main()
