"""Seed-paired statistics shared by the demos: runs grouped by seed, paired differences with their SE."""

from __future__ import annotations

import math
import statistics
from typing import Any


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
