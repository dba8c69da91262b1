"""The step-cost benchmark end to end on a tiny budget, and its target table from known figures."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import step_cost  # noqa: E402


def test_smoke_run_times_interleaved_variants_and_measures_memory(tmp_path):
    variants = ["fixed", "dto @ representation (logits)", "no_kd", "fixed, teacher_cache"]
    command = [
        sys.executable,
        str(BENCHMARKS / "step_cost.py"),
        "--only",
        *variants,
        "--setups",
        "vit_tiny+resnet_demo",
        "--repeats",
        "1",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--memory_steps",
        "1",
        "--results_dir",
        str(tmp_path),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "machine:" in completed.stdout
    saved = json.loads((tmp_path / "step_cost.json").read_text())
    rows = {r["variant"]: r for r in saved["rows"]}
    assert set(rows) == set(variants)
    assert rows["fixed"]["ratio_to_plain_kd"] == 1.0 and rows["fixed"]["steps_measured"] == 2
    assert (
        0 < rows["dto @ representation (logits)"]["teacher_share"] < 1
        and rows["no_kd"]["teacher_share"] is None
        and rows["fixed, teacher_cache"]["teacher_share"] is None  # the teacher never runs in a step
    )
    assert (
        saved["memory"]["vit_tiny"]["fixed"]["state_mib"] < 1e-3
    )  # pi and counters only: no gradient buffer
    table = (tmp_path / "step_cost.md").read_text()
    assert "| dto @ representation (logits) |" in table and "<= 1.10x" in table
    # --merge: measure another setup, keep this one's rows
    merged = [
        sys.executable,
        str(BENCHMARKS / "step_cost.py"),
        "--only",
        "fixed",
        "--setups",
        "vit_tiny+resnet18",
        "--merge",
        *command[command.index("--repeats") :],
    ]
    completed = subprocess.run(merged, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    saved = json.loads((tmp_path / "step_cost.json").read_text())
    kept = [(r["teacher"], r["variant"]) for r in saved["rows"]]
    assert sorted(kept[:-1]) == sorted(("resnet_demo", v) for v in variants) and kept[-1] == (
        "resnet18",
        "fixed",
    )


def test_target_table_says_which_targets_are_met():
    rows = [
        {
            "student": "vit_tiny",
            "teacher": "resnet_demo",
            "batch": 64,
            "variant": variant,
            "median_step_ms": ms,
            "ratio_to_plain_kd": ms / 100,
            "steps_measured": 20,
            "teacher_share": 0.1,
            "image_size": 32,
            "repeats": 4,
            "steps": 6,
            "warmup": 2,
        }
        for variant, ms in [("fixed", 100), ("dto @ representation (logits)", 108), ("dto @ parameters", 160)]
    ]
    info = {"cpu": "test cpu", "cores": 2, "torch_threads": 2, "gpu": None, "torch": "x"}
    table = step_cost.markdown(rows, {"vit_tiny": {}}, info)
    assert "| <= 1.10x | 1.08x met |" in table
    assert "| <= 1.50x | 1.60x **not met** |" in table
    assert (
        "amortized, same-batch look-ahead (`dto_amortized, same-batch look-ahead`) | <= 1.25x | - |" in table
    )
