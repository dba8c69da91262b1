"""Seed-paired statistics of the demos, against a hand computation."""

import math
import platform
import subprocess
from pathlib import Path

import pytest
import torch

from hf_dtokd.demos.paired_seeds import (
    cpu_name,
    load_run,
    paired_difference,
    plotted_runs,
    runs_by_seed,
    save_run,
)


def test_runs_pair_by_seed_and_unshared_seeds_are_left_out():
    results = [
        {"run": "a", "seed": 0, "m": 0.50},
        {"run": "b", "seed": 0, "m": 0.40},
        {"run": "a", "seed": 1, "m": 0.70},
        {"run": "b", "seed": 1, "m": 0.40},
        {"run": "a", "seed": 2, "m": 0.90},  # no partner in b
    ]
    by_run = runs_by_seed(results)
    assert list(by_run) == ["a", "b"] and sorted(by_run["a"]) == [0, 1, 2]
    mean, se = paired_difference(by_run["a"], by_run["b"], "m")
    # differences 0.10 and 0.30: mean 0.20, sample std 0.1414, SE = std / sqrt(2) = 0.10
    assert mean == pytest.approx(0.20) and se == pytest.approx(math.sqrt(0.02) / math.sqrt(2))
    assert paired_difference({0: by_run["a"][0]}, by_run["b"], "m") == (pytest.approx(0.10), None)
    assert paired_difference(by_run["a"], {}, "m") == (None, None)


def test_a_recorded_run_is_reused_under_its_settings_whatever_the_settings_it_does_not_read(tmp_path) -> None:
    path = tmp_path / "run.json.gz"
    save_run(path, {"lr": 2e-3, "token_projector": "none"}, {"map": 0.4})
    assert load_run(path, {"lr": 2e-3, "token_projector": "none"}) == {"map": 0.4}
    assert load_run(path, {"lr": 1e-3, "token_projector": "none"}) is None
    # a field the run does not read, recorded or not, under any value: reused
    assert load_run(path, {"lr": 2e-3}, unread={"token_projector"}) == {"map": 0.4}
    assert load_run(path, {"lr": 2e-3, "token_projector": "vkd"}, unread={"token_projector"}) == {"map": 0.4}
    assert load_run(path, {"lr": 2e-3}) is None  # unless it is read
    assert load_run(tmp_path / "missing.json.gz", {"lr": 2e-3}) is None


def test_cpu_name_is_the_model_name_the_system_reports_with_torchs_kernels():
    name, _, kernels = cpu_name().rpartition(" (torch CPU kernels: ")
    assert name and "\n" not in name
    assert kernels == f"{torch.backends.cpu.get_cpu_capability()})"
    if Path("/proc/cpuinfo").is_file() and "model name" in Path("/proc/cpuinfo").read_text():
        line = subprocess.run(
            ["grep", "-m1", "model name", "/proc/cpuinfo"], capture_output=True, text=True, check=True
        ).stdout
        assert name == line.split(":", 1)[1].strip()
    else:
        assert name in (platform.processor(), platform.machine(), "unknown")


def test_the_plot_draws_the_first_seed_of_every_balanced_row():
    methods = {"no_kd": "fixed", "fixed_0.9": "fixed", "dto_shared": "dto", "dto_amortized": "dto_amortized"}
    results = [{"run": run, "method": m, "seed": seed} for seed in (3, 4, 5) for run, m in methods.items()]
    assert [(r["run"], r["seed"]) for r in plotted_runs(results, 3)] == [
        ("dto_shared", 3),
        ("dto_amortized", 3),
    ]
