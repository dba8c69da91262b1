"""The README's generated short table of the converged paper-regime benchmark (docs/update_readme.py)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "docs"))

import update_readme  # noqa: E402


def _row(
    row: str,
    baseline: str,
    pairs: int,
    diff: float,
    se: float,
    conflict: float | None,
    experiment: bool = False,
) -> dict:
    return {
        "row": row,
        "experiment": experiment,
        "baseline": baseline,
        "pairs": pairs,
        "top1_mean": 0.987,
        "top1_std": 0.005,
        "diff_to_baseline": diff,
        "diff_se": se,
        "conflict_rate": conflict,
        "median_weight_distill": 0.206,
    }


def test_compact_table_marks_progress_baselines_and_rows_with_more_pairs():
    report = {
        "common_pairs": 15,
        "pairs_finished": 15,
        "pairs_planned": 15,
        "table": [
            _row("fixed_0.5", "fixed_0.5", 25, 0.0, 0.0, None),
            _row("dto", "fixed_0.5", 15, -0.0004, 0.0012, 0.604),
            _row("dot", "fixed_0.5", 25, -0.0127, 0.0046, 0.38),
        ],
    }
    lines = update_readme.paper_compact_table(report).splitlines()
    assert lines[0].startswith("| row | test top-1 % (15 pairs) |")
    assert lines[2] == "| fixed_0.5 | 98.7 +- 0.5 (25 pairs) | best fixed | - | 0.206 |"
    # a row on the common pairs carries no mark; a sign is kept even when the mean rounds to zero
    assert lines[3] == "| dto | 98.7 +- 0.5 | -0.04 +- 0.12 | 60.4 % | 0.206 |"
    assert lines[4] == "| dot | 98.7 +- 0.5 (25 pairs) | -1.27 +- 0.46 | 38.0 % | 0.206 |"
    assert len(lines) == 5


def test_compact_table_puts_an_experiment_in_its_own_table_after_the_comparison():
    report = {
        "common_pairs": 15,
        "table": [
            _row("fixed_0.5", "fixed_0.5", 15, 0.0, 0.0, None),
            _row("dot_adamw", "fixed_0.5", 15, -0.0726, 0.0549, 0.384, experiment=True),
            _row("dto", "fixed_0.5", 15, -0.0007, 0.001, 0.609),
        ],
    }
    lines = update_readme.paper_compact_table(report).splitlines()
    assert [line.split(" | ")[0] for line in lines[2:4]] == ["| fixed_0.5", "| dto"]
    assert lines[4:7] == ["", "Experiments, not methods to compare against:", ""]
    assert lines[7] == lines[0] and lines[9] == "| dot_adamw | 98.7 +- 0.5 | -7.26 +- 5.49 | 38.4 % | 0.206 |"
    assert len(lines) == 10


def test_compact_table_of_a_benchmark_in_progress_says_so_first():
    report = {
        "common_pairs": 9,
        "pairs_finished": 9,
        "pairs_planned": 15,
        "table": [_row("fixed_0.5", "fixed_0.5", 9, 0.0, 0.0, None)],
    }
    text = update_readme.paper_compact_table(report)
    assert text.startswith("**In progress: 9 of 15 fold / seed pairs finished by every row.**\n\n| row |")
    assert "(9 pairs)" in text.splitlines()[2]


def _demo_folder(path: Path, students: int) -> Path:
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({"students": [{"seed": s} for s in range(students)]}))
    (path / "results.md").write_text(f"| table of {students} runs |")
    (path / "tradeoff.png").write_bytes(b"png")
    return path


class _Blocks:
    """Records the blocks quote_demo fills instead of editing the real pages."""

    def __init__(self) -> None:
        self.filled: dict[str, str] = {}

    def fill(self, name: str, body: str) -> None:
        self.filled[name] = body


def test_a_demo_folder_with_fewer_runs_than_the_committed_results_is_not_quoted(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(update_readme, "ROOT", tmp_path)
    results = tmp_path / "docs" / "results"
    results.mkdir(parents=True)
    committed = json.dumps({"students": [{"seed": s} for s in range(12)]})
    (results / "shapes_demo_results.json").write_text(committed)
    smoke = _demo_folder(tmp_path / "outputs" / "shapes", 4)

    blocks = _Blocks()
    update_readme.quote_demo(blocks, smoke, "shapes_demo", "detection-demo")
    assert blocks.filled == {} and (results / "shapes_demo_results.json").read_text() == committed
    assert "4 student runs against the 12 of the committed docs/results/shapes_demo_results.json" in (
        capsys.readouterr().out
    )

    update_readme.quote_demo(blocks, smoke, "shapes_demo", "detection-demo", allow_fewer_runs=True)
    assert blocks.filled == {"detection-demo": "| table of 4 runs |"}
    assert len(json.loads((results / "shapes_demo_results.json").read_text())["students"]) == 4

    full = _demo_folder(tmp_path / "outputs" / "full", 12)  # more runs than committed (now 4): no flag needed
    update_readme.quote_demo(blocks, full, "shapes_demo", "detection-demo")
    assert blocks.filled["detection-demo"] == "| table of 12 runs |"
