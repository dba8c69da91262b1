"""Plots of the trade-off over training, read from Trainer log histories."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def series(log_history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one logged scalar."""
    rows = [(row["step"], row[key]) for row in log_history if key in row and "step" in row]
    return [s for s, _ in rows], [float(v) for _, v in rows]


def tradeoff_keys(log_history: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """The logged trade-off scalars, grouped by panel: pi per objective, cosines, norm ratios, losses."""
    keys = sorted({k for row in log_history for k in row})
    return {
        "pi": [k for k in keys if k.startswith("pi_")],
        "weights": [k for k in keys if k.startswith("weight_")],
        "grad_cos": [k for k in keys if k.startswith("grad_cos")],
        "grad_conflict_rate": [k for k in keys if k.startswith("grad_conflict_rate")],
        "grad_norm_ratio": [k for k in keys if k.startswith("grad_norm_ratio")],
        "losses": [k for k in keys if k.endswith("_loss") and k not in ("train_loss", "eval_loss")],
    }


PANEL_TITLES = {
    "pi": "pi (weight of each objective but the task)",
    "weights": "raw-loss weight applied to each loss (per step, faint)",
    "grad_cos": "cos(g_objective, g_task): per step, mean and min  (< 0: conflict)",
    "grad_conflict_rate": "share of steps with cos < 0",
    "grad_norm_ratio": "||g_objective|| / ||g_task||  (dominance)",
    "losses": "losses",
}


def plot_tradeoff(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | Path,
    traces: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]] | None = None,
) -> Path:
    """PNG with pi per objective, gradient conflict and dominance, and the losses over steps.

    One colour per run in every panel; with several objectives each key gets its own line style.
    ``traces`` (per run, ``StepTrace.to_dict()``): the per-step cosines are drawn as dots under the interval
    mean / min lines, and the per-step applied weights as thin lines under their interval means.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped: dict[str, list[str]] = {panel: [] for panel in PANEL_TITLES}
    for history in histories.values():
        for panel, keys in tradeoff_keys(history).items():
            grouped[panel] += [k for k in keys if k not in grouped[panel]]
    panels = [p for p in PANEL_TITLES if grouped[p]]
    if not grouped["pi"]:
        raise ValueError(
            "no trade-off scalar was logged; train for at least logging_steps steps before plotting"
        )
    colours = {name: f"C{i}" for i, name in enumerate(histories)}  # one colour per run in every panel
    styles = ["-", "--", ":", "-."]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.4), squeeze=False)
    for axis, panel in zip(axes[0], panels):
        for name, history in histories.items():
            trace = (traces or {}).get(name, {})
            for key in grouped[panel] if panel in ("grad_cos", "weights") else ():
                if key in trace:
                    steps, values = trace[key]["step"], trace[key]["value"]
                    marker = dict(marker=".", markersize=2, linestyle="none") if panel == "grad_cos" else {}
                    axis.plot(steps, values, color=colours[name], alpha=0.35, linewidth=0.6, **marker)
            for index, key in enumerate(grouped[panel]):
                steps, values = series(history, key)
                if steps:
                    label = name if len(grouped[panel]) == 1 else f"{name}: {key}"
                    axis.plot(
                        steps,
                        values,
                        styles[index % len(styles)],
                        label=label,
                        color=colours[name],
                        linewidth=1.2,
                    )
        axis.set_title(PANEL_TITLES[panel], fontsize=9)
        axis.set_xlabel("step")
        if panel in ("grad_norm_ratio", "losses", "weights"):
            axis.set_yscale("log")
        if panel == "grad_cos":
            axis.axhline(0.0, color="grey", linewidth=0.6)
        # under the panel, so that many runs do not cover the curves
        axis.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1, frameon=False)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")  # the legends under the panels included
    plt.close(figure)
    return path
