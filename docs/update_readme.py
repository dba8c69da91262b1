"""Regenerate the README's generated blocks from result files and from DTOKDConfig itself.

Blocks are delimited by ``<!-- name:start -->`` / ``<!-- name:end -->``:

* ``demo``: the table printed by the digits demo (``python -m hf_dtokd.demos.digits``), copied with its
  JSON and plot into ``docs/results/``;
* ``digits-signals``: the digits demo's opt-in signal runs (feature KD per projector, DeiT token), from
  ``--signals-demo-dir`` (``python -m hf_dtokd.demos.digits --runs <SIGNAL_RUNS> --output_dir outputs/digits_signals``);
* ``detection-demo``: the table printed by the detection demo (``python -m hf_dtokd.demos.shapes``),
  copied with its JSON and plot into ``docs/results/``;
* ``step-cost``: ``benchmarks/results/step_cost.md`` (``python benchmarks/step_cost.py``);
* ``compare``: ``benchmarks/results/compare_methods.md`` (``python benchmarks/compare_methods.py``),
  and its run time in the sentence before it;
* ``compare-vit`` (in ``docs/compare_methods.md`` only): the earlier regime's table,
  ``benchmarks/results/vit_labelled_only/compare_methods.md`` (``--student_family vit --student_width 64
  --unlabelled_pool False``);
* ``compare-signals``: ``benchmarks/results/signal_rows/compare_methods.md`` (the signal rows:
  ``python benchmarks/compare_methods.py --student_family vit --student_width 64 --unlabelled_pool False
  --rows fixed_0.5 <SIGNAL_ROWS> --seeds 1 --results_dir
  benchmarks/results/signal_rows``);
* ``config``: the DTOKDConfig fields with their defaults and help text.

Run: ``python docs/update_readme.py [--demo-dir outputs/digits] [--detection-demo-dir outputs/shapes]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
from pathlib import Path

from transformers import TrainingArguments

from hf_dtokd import DTOKDConfig

ROOT = Path(__file__).resolve().parents[1]


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"README.md has no <!-- {name}:start --> ... <!-- {name}:end --> block")
    return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


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


def quote_demo(text: str, folder: Path, prefix: str, block: str) -> str:
    """Copy a demo's results (table, JSON, plot) into docs/results/<prefix>_* and its table into ``block``."""
    if not (folder / "results.md").is_file():
        return text
    results = ROOT / "docs" / "results"
    results.mkdir(parents=True, exist_ok=True)
    for name in ("results.md", "results.json", "tradeoff.png"):
        shutil.copy(folder / name, results / f"{prefix}_{name}")
    return replace_block(text, block, (folder / "results.md").read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--demo-dir", default=str(ROOT / "outputs" / "digits"))
    parser.add_argument("--detection-demo-dir", default=str(ROOT / "outputs" / "shapes"))
    parser.add_argument("--signals-demo-dir", default=str(ROOT / "outputs" / "digits_signals"))
    args = parser.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text()
    for folder, prefix, block in (
        (args.demo_dir, "digits_demo", "demo"),
        (args.signals_demo_dir, "digits_signals", "digits-signals"),
        (args.detection_demo_dir, "shapes_demo", "detection-demo"),
    ):
        text = quote_demo(text, Path(folder), prefix, block)
    step_cost = ROOT / "benchmarks" / "results" / "step_cost.md"
    if step_cost.is_file():
        text = replace_block(text, "step-cost", step_cost.read_text())
    compare = ROOT / "benchmarks" / "results" / "compare_methods.md"
    if compare.is_file():
        text = replace_block(text, "compare", compare.read_text())
        page = ROOT / "docs" / "compare_methods.md"
        page.write_text(replace_block(page.read_text(), "compare", compare.read_text()))
        report = json.loads(compare.with_suffix(".json").read_text())
        # the runs' own wall times (a resumed benchmark's total_seconds covers only its last part)
        steps = report["arguments"]["max_steps"]
        minutes = (
            sum(r["seconds_per_step"] * steps for r in report["runs"]) / report["arguments"]["workers"] / 60
        )
        text = re.sub(
            r"\(about \S+ minutes on 2 cores\) runs every method",
            f"(about {minutes:.0f} minutes on 2 cores) runs every method",
            text,
        )
    earlier = ROOT / "benchmarks" / "results" / "vit_labelled_only" / "compare_methods.md"
    if earlier.is_file():
        page = ROOT / "docs" / "compare_methods.md"
        page.write_text(replace_block(page.read_text(), "compare-vit", earlier.read_text()))
    signal_rows = ROOT / "benchmarks" / "results" / "signal_rows" / "compare_methods.md"
    if signal_rows.is_file():
        text = replace_block(text, "compare-signals", signal_rows.read_text())
    text = replace_block(text, "config", config_table())
    readme.write_text(text)
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
