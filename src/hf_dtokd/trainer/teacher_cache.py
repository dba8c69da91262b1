"""The teacher's logits computed once for the training set instead of at every step.

With ``DTOKDConfig(teacher_cache=True)`` the trainer runs the frozen teacher over ``train_dataset`` once
(batched, no grad, on the training device, through the same input conversion and label mapping as a live
step; under data parallelism each process takes a contiguous share of the rows and the logits are gathered)
and stores the result as a ``teacher_logits`` column (``Dataset.add_column``). Each row carries
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
from accelerate import Accelerator
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


def process_rows(num_rows: int, num_processes: int, process_index: int) -> list[int]:
    """This process's share of the rows: a contiguous block of ``ceil(num_rows / num_processes)`` indices,
    the last block padded with the last row so that every process runs the same forwards (a sharded teacher,
    FSDP or ZeRO-3, needs every rank in every forward)."""
    if num_rows == 0:
        raise ValueError("teacher_cache=True: train_dataset is empty")
    share = -(-num_rows // num_processes)
    rows = list(range(process_index * share, min((process_index + 1) * share, num_rows)))
    return rows + [num_rows - 1] * (share - len(rows))


def add_teacher_logits(
    dataset: Dataset,
    teacher_logits: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    input_columns: list[str],
    batch_size: int,
    accelerator: Accelerator,
) -> Dataset:
    """``dataset`` with a float32 ``teacher_logits`` column: ``teacher_logits(batch)`` of each batch of the
    ``input_columns``, computed once. Every process runs the teacher on its share of the rows
    (``process_rows``); each batch's logits are gathered from all processes to the host, so every process
    ends with the whole column (and the cost of one pass over the data is split, not repeated)."""
    rows = process_rows(len(dataset), accelerator.num_processes, accelerator.process_index)
    share = len(rows)
    source = dataset.remove_columns(TEACHER_LOGITS) if TEACHER_LOGITS in dataset.column_names else dataset
    local = source.select(rows).with_format("numpy", columns=input_columns)
    blocks: list[np.ndarray] = []  # per batch: (processes, batch, classes)
    for start in range(0, share, batch_size):
        batch = local[start : start + batch_size]
        inputs = {
            name: torch.as_tensor(np.asarray(batch[name])).to(accelerator.device) for name in input_columns
        }
        with torch.no_grad():
            logits = teacher_logits(inputs).float().contiguous()
        gathered = accelerator.gather(logits) if accelerator.num_processes > 1 else logits
        blocks.append(gathered.cpu().numpy().reshape(accelerator.num_processes, len(logits), -1))
    # (processes, share, classes): process p holds rows p * share + [0, share) in order; padding last, cut off
    column = np.concatenate(blocks, axis=1).reshape(accelerator.num_processes * share, -1)[: len(dataset)]

    # one column added to the table: the other columns are neither copied nor decoded
    cached = source.add_column(
        TEACHER_LOGITS, list(column), feature=List(Value("float32"), length=column.shape[1])
    )
    # the caller's format back (e.g. "torch"), now with the new column
    form = dataset.format
    columns = form["columns"]
    if columns is not None:
        columns = [*columns, TEACHER_LOGITS] if set(columns) != set(dataset.column_names) else None
    return cached.with_format(form["type"], columns, form["output_all_columns"], **form["format_kwargs"])
