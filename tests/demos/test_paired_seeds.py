"""Seed-paired statistics of the demos, against a hand computation."""

import math

import pytest

from hf_dtokd.demos.paired_seeds import paired_difference, runs_by_seed


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
