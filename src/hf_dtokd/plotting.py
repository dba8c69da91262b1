"""Plots of the trade-off over training, read from Trainer log histories."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def series(log_history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one logged scalar."""
    rows = [(row["step"], row[key]) for row in log_history if key in row and "step" in row]
    return [s for s, _ in rows], [float(v) for _, v in rows]


def plot_tradeoff(histories: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path) -> Path:
    """PNG with pi_distill, grad_cos and the two losses over steps, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("pi_distill", "pi (distillation weight)"),
        ("grad_cos", "cos(g_distill, g_task)  (< 0: conflict)"),
        ("grad_norm_ratio", "||g_distill|| / ||g_task||  (dominance)"),
        ("task_loss", "task loss"),
        ("distill_loss", "distillation loss"),
    ]
    panels = [p for p in panels if any(series(h, p[0])[0] for h in histories.values())]
    if not panels:
        raise ValueError(
            "no trade-off scalar was logged; train for at least logging_steps steps before plotting"
        )
    colours = {name: f"C{i}" for i, name in enumerate(histories)}  # one colour per run in every panel
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for axis, (key, title) in zip(axes[0], panels):
        for name, history in histories.items():
            steps, values = series(history, key)
            if steps:
                axis.plot(steps, values, label=name, color=colours[name], linewidth=1.2)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("step")
        if key == "grad_norm_ratio":
            axis.set_yscale("log")
        if key == "grad_cos":
            axis.axhline(0.0, color="grey", linewidth=0.6)
        axis.legend(fontsize=7)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
