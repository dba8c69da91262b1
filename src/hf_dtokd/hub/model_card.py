"""The distillation section of the model card: teacher, method, hyper-parameters, pi over training.

``DTOKDTrainer.create_model_card`` (called by ``push_to_hub``) lets the Trainer write its card
(front matter with ``base_model`` = the student's base, tags, metrics, training hyper-parameters)
and appends this section, so a reader of the pushed student sees how it was distilled.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from huggingface_hub import EvalResult, ModelCard

from hf_dtokd.hub.plotting import series, tradeoff_keys

CARD_TAGS = ("knowledge-distillation", "dto-kd")


def _summary(values: list[float]) -> str:
    return (
        f"first {values[0]:.3f}, mean {statistics.fmean(values):.3f}, min {min(values):.3f}, "
        f"max {max(values):.3f}, final {values[-1]:.3f}"
    )


def distillation_section(
    config: Any,
    method: str,
    teacher: str,
    objective_names: Sequence[str],
    log_history: Sequence[Mapping[str, Any]],
    plot_file: str | None,
    fields: Sequence[str] = ("temperature",),
    trainer: str = "DTOKDTrainer",
    objectives: Mapping[str, str] | None = None,
    signal_fields: Sequence[str] = (),
    warnings: Sequence[str] = (),
) -> str:
    """Markdown for the card: what was distilled from what, by which trainer and losses (``objectives``: a
        description per objective name), how (``fields``: the config fields that set the method, declared by its
        balancer class; ``signal_fields``: the signal's options), and how the trade-off moved. ``warnings`` (a run with
    non-finite losses or weights) open the section, in bold."""
    hyper = ", ".join(f"`{name}={getattr(config, name)!r}`" for name in fields)
    described = objectives or {}
    lines = [
        "## Distillation",
        "",
        *[f"> **Warning:** {warning}\n" for warning in warnings],
        f"Distilled with [hf-dtokd](https://pypi.org/project/hf-dtokd/) (`{trainer}`).",
        "",
        f"- teacher: `{teacher}`",
        "- objectives: "
        + ", ".join(f"`{n}`" + (f" ({described[n]})" if n in described else "") for n in objective_names),
        f"- trade-off method: `{method}`; {hyper}",
    ]
    if signal_fields:
        lines.append(
            "- signal options: " + ", ".join(f"`{name}={getattr(config, name)!r}`" for name in signal_fields)
        )
    keys = tradeoff_keys(log_history)
    if keys["pi"]:
        lines += ["", "### The trade-off over training", ""]
        for key in keys["pi"]:
            _, values = series(log_history, key)
            lines.append(f"- `{key}` (logged every {config.logging_steps} steps): {_summary(values)}")
        for key in keys["weights"]:
            _, values = series(log_history, key)
            lines.append(f"- `{key}` (the raw-loss weight actually applied): {_summary(values)}")
        for key in keys["grad_conflict_rate"]:
            _, values = series(log_history, key)
            lines.append(
                f"- `{key}` (share of optimizer steps whose gradients conflict, cos < 0): {_summary(values)}"
            )
        for key in keys["grad_cos"]:
            _, values = series(log_history, key)
            lines.append(f"- `{key}`: {_summary(values)}")
        for key in keys["grad_norm_ratio"]:
            _, values = series(log_history, key)
            lines.append(f"- `{key}` (dominance): median {statistics.median(values):.3g}")
    else:
        lines += ["", "No trade-off scalar was logged (train for at least `logging_steps` steps)."]
    evaluations = [row for row in log_history if any(k.startswith("eval_") for k in row)]
    if evaluations:
        final = {
            k: v for k, v in evaluations[-1].items() if k.startswith("eval_") and isinstance(v, (int, float))
        }
        shown = ", ".join(
            f"`{k}` {v:.4g}" for k, v in final.items() if "runtime" not in k and "per_second" not in k
        )
        lines += ["", f"Final evaluation: {shown}."]
    if plot_file:
        lines += ["", f"![pi, gradient conflict and dominance over training]({plot_file})"]
    return "\n".join(lines) + "\n"


#: Evaluation keys that are bookkeeping, not results.
NOT_RESULTS = ("runtime", "samples_per_second", "steps_per_second", "epoch", "step")
#: Readable names of the built-in metrics in the card's model-index.
METRIC_NAMES = {
    "top1": "Top-1 accuracy",
    "top5": "Top-5 accuracy",
    "loss": "Loss",
    "map": "mAP",
    "mean_iou": "mIoU",
    "overall_accuracy": "Pixel accuracy",
}


def final_evaluation(log_history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The last evaluation's finite results (``eval_`` prefix dropped, bookkeeping left out)."""
    rows = [row for row in log_history if any(key.startswith("eval_") for key in row)]
    if not rows:
        return {}
    return {
        key[len("eval_") :]: float(value)
        for key, value in rows[-1].items()
        if key.startswith("eval_")
        and isinstance(value, (int, float))
        and math.isfinite(value)  # a NaN loss is no result to index
        and key[len("eval_") :] not in NOT_RESULTS
    }


def add_eval_results(
    card_path: str, log_history: Sequence[Mapping[str, Any]], task: str | None, dataset: str | None
) -> None:
    """Fill the card's ``model-index`` with the final evaluation when the Trainer left it empty.

    The Trainer writes model-index results only for a fixed list of metric names (``accuracy``, ``f1``...),
    so ``top1`` or ``map`` never reach it. Written with huggingface_hub's card classes, which the Hub's parser
    reads back. Needs a task and a dataset name (the index is rejected without them)."""
    results = final_evaluation(log_history)
    card = ModelCard.load(card_path)
    if not results or not task or not dataset or card.data.eval_results:
        return
    card.data.eval_results = [
        EvalResult(
            task_type=task,
            dataset_type=dataset,
            dataset_name=dataset,
            metric_type=name,
            metric_name=METRIC_NAMES.get(name, name),
            metric_value=value,
        )
        for name, value in results.items()
    ]
    if card.data.model_name is None:
        card.data.model_name = card.data.to_dict().get("model-index", [{}])[0].get("name") or "student"
    card.save(card_path)
