"""Per-step values of the trade-off figures, kept between logging intervals for the plot.

The Trainer logs one number per interval (a mean), which can hide what users look for: a mean cosine of
0.1 over 50 steps may hold ten steps in conflict, and the weight on the distillation loss may collapse for
a few steps. The trainer hands each interval's per-step values (one per optimizer step, or per micro-batch
where the figure is set per micro-batch) to a ``StepTrace``, which places them evenly over the interval's
steps; the trade-off plot draws them beside the interval means, and ``tradeoff_steps.json`` in the output
folder holds them.

The trace is saved with every checkpoint (``state_dict``) and continued on resume, so a resumed run's
trace and plot equal the uninterrupted run's.

Memory stays bounded: past ``max_points`` values per figure, every other point is dropped and later
values are kept at half the rate (the points that remain are still single steps, never averages).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

TRACE_NAME = "tradeoff_steps.json"


class StepTrace:
    """``{figure: (positions, values)}``: per-step values, positions in optimizer steps (fractional within a
    step when a figure is recorded per micro-batch)."""

    def __init__(self, max_points: int = 20_000) -> None:
        if max_points < 2:
            raise ValueError(f"max_points must be >= 2, got {max_points}")
        self.max_points = max_points
        self.points: dict[str, tuple[list[float], list[float]]] = {}
        self._stride: dict[str, int] = {}
        self._seen: dict[str, int] = {}

    def add(self, name: str, first_step: int, last_step: int, values: torch.Tensor) -> None:
        """The ``n`` values recorded over the steps ``first_step < step <= last_step``, in order."""
        values = values.detach().double().reshape(-1).cpu().tolist()
        if not values:
            return
        span = max(last_step - first_step, 1)
        positions, kept = self.points.setdefault(name, ([], []))
        stride = self._stride.setdefault(name, 1)
        for index, value in enumerate(values):
            seen = self._seen.get(name, 0)
            self._seen[name] = seen + 1
            if seen % stride:
                continue
            positions.append(first_step + span * (index + 1) / len(values))
            kept.append(value)
            if len(kept) > self.max_points:
                del positions[1::2], kept[1::2]
                stride = self._stride[name] = 2 * stride

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the trace after a resume (saved with each checkpoint)."""
        return {
            "max_points": self.max_points,
            "points": {name: (list(p), list(v)) for name, (p, v) in self.points.items()},
            "stride": dict(self._stride),
            "seen": dict(self._seen),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.max_points = state["max_points"]
        self.points = {name: (list(p), list(v)) for name, (p, v) in state["points"].items()}
        self._stride, self._seen = dict(state["stride"]), dict(state["seen"])

    def to_dict(self) -> dict[str, dict[str, list[float]]]:
        return {name: {"step": list(p), "value": list(v)} for name, (p, v) in self.points.items()}

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / TRACE_NAME
        path.write_text(json.dumps(self.to_dict()))
        return path
