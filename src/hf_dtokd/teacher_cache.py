"""The teacher's logits computed once for the training set instead of at every step.

With ``DTOKDConfig(teacher_cache=True)`` the trainer runs the frozen teacher over ``train_dataset`` once,
with ``datasets.Dataset.map`` (batched, no grad, on the training device, through the same input conversion
and label mapping as a live step), and stores the result as a ``teacher_logits`` column. Each row carries
its own teacher output, so shuffling, sharding and resuming keep example and logits together; a step
then reads the column instead of running the teacher. Worth it when the teacher forward is a large share
of the step and the run makes more than one pass over the data (``benchmarks/step_cost.py`` measures it).

The cache is only valid when every epoch feeds the teacher the same pixels. An on-the-fly transform
(``set_transform`` / ``with_transform``, where random augmentation usually lives) is refused. A
collator that augments cannot be seen from here: it is warned about, not refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from datasets import Dataset, List, Value

logger = logging.getLogger(__name__)

TEACHER_LOGITS = "teacher_logits"


def check_cacheable(dataset: Any, data_collator: Any) -> None:
    """Raise unless ``dataset`` is a ``datasets.Dataset`` whose rows are the same at every epoch."""
    if not isinstance(dataset, Dataset):
        raise TypeError(
            f"teacher_cache=True stores the teacher's logits as a column of a datasets.Dataset; train_dataset is a "
            f"{type(dataset).__name__}. Build it with datasets (Dataset.from_dict / load_dataset), or set "
            "teacher_cache=False"
        )
    if dataset.format.get("type") == "custom":
        raise ValueError(
            "teacher_cache=True: train_dataset has an on-the-fly transform (set_transform / with_transform), where "
            "random augmentation usually lives; the cached teacher logits would belong to other pixels than each "
            "step's. Apply deterministic preprocessing with Dataset.map instead, or set teacher_cache=False"
        )
    collator = getattr(data_collator, "__name__", type(data_collator).__name__)
    if collator not in ("default_data_collator", "DefaultDataCollator"):
        logger.warning(
            "teacher_cache=True with the data collator %s: if it augments the pixels, the cached teacher logits "
            "are stale; the cache cannot check this.",
            collator,
        )


def add_teacher_logits(
    dataset: Dataset,
    teacher_logits: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    input_columns: list[str],
    batch_size: int,
    device: torch.device,
) -> Dataset:
    """``dataset`` with a float32 ``teacher_logits`` column: ``teacher_logits(batch)`` of each batch of the
    ``input_columns`` (moved to ``device``), computed once with ``Dataset.map``."""

    def compute(batch: dict[str, Any]) -> dict[str, np.ndarray]:
        inputs = {name: torch.as_tensor(np.asarray(batch[name])).to(device) for name in input_columns}
        with torch.no_grad():
            logits = teacher_logits(inputs)
        return {TEACHER_LOGITS: logits.float().cpu().numpy()}

    features = dataset.features.copy()
    width = compute(dataset.with_format("numpy")[:1])[TEACHER_LOGITS].shape[-1]
    features[TEACHER_LOGITS] = List(Value("float32"), length=width)
    source = dataset.remove_columns(TEACHER_LOGITS) if TEACHER_LOGITS in dataset.column_names else dataset
    cached = source.with_format("numpy").map(
        compute,
        batched=True,
        batch_size=batch_size,
        features=features,
        keep_in_memory=True,
        desc="teacher logits (teacher_cache)",
    )
    # the caller's format back (e.g. "torch"), now with the new column
    form = dataset.format
    columns = form["columns"]
    if columns is not None:
        columns = [*columns, TEACHER_LOGITS] if set(columns) != set(dataset.column_names) else None
    return cached.with_format(form["type"], columns, form["output_all_columns"], **form["format_kwargs"])
