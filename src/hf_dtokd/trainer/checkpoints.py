"""Checkpoints that resume exactly: the trade-off state beside the Trainer's, and the student's weights.

* ``dtokd_state.pt`` holds the method's state (``pi``, the Gram weights, the FAMO logits or the
  uncertainty log-variances with their Adam moments, DOT's momentum buffers, ...) with the method's
  name, the objectives and a format version. It is written to a temporary file and renamed, so a
  crash while saving never leaves a truncated state behind. Loading refuses a state written by
  another method, for other objectives, or in an older layout, rather than silently restarting ``pi``.
* A checkpoint is *complete* when it holds ``trainer_state.json`` (the Trainer writes it last) and
  ``dtokd_state.pt``. ``resume_from_checkpoint=True`` picks the newest complete one; an explicit
  incomplete one is an error naming the fix.
* Student weights: transformers 5.23's ``save_pretrained`` writes some models (ViT, DeiT) in the Hub's
  original key layout while ``Trainer._load_from_checkpoint`` restores with a plain
  ``load_state_dict``: resuming leaves the renamed weights at their initial values with only a
  warning (huggingface/transformers#48805). ``restore_student`` loads the checkpoint through
  ``from_pretrained``, which maps the layout on every version, and copies the result in strictly.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

STATE_NAME = "dtokd_state.pt"
TRAINER_STATE_NAME = "trainer_state.json"
FORMAT_VERSION = 2
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


def save_tradeoff_state(folder: str, method: str, objectives: tuple[str, ...], state: dict[str, Any]) -> str:
    """Write the trade-off state atomically (temporary file, then rename); return its path."""
    path = os.path.join(folder, STATE_NAME)
    payload = {"format": FORMAT_VERSION, "method": method, "objectives": list(objectives), **state}
    partial = path + ".partial"
    torch.save(payload, partial)
    os.replace(partial, path)
    return path


def load_tradeoff_state(folder: str, method: str, objectives: tuple[str, ...]) -> dict[str, Any]:
    """Read and validate the trade-off state of a checkpoint for a run of ``method`` over ``objectives``."""
    path = os.path.join(folder, STATE_NAME)
    if not os.path.isfile(path):
        raise ValueError(
            f"checkpoint {folder} has no trade-off state ({STATE_NAME}): it was written by another trainer, by an "
            "older hf-dtokd, or the save was interrupted. Resuming would silently restart pi; resume from a "
            "checkpoint written by DTOKDTrainer, or start the run afresh without resume_from_checkpoint"
        )
    state = torch.load(path, map_location="cpu", weights_only=False)
    found = state.get("format")
    if found != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {folder} holds trade-off state in layout {found!r} (older hf-dtokd), this version reads "
            f"layout {FORMAT_VERSION}; resume with the hf-dtokd version that wrote it, or start afresh"
        )
    if state["method"] != method:
        raise ValueError(
            f"checkpoint {folder} was written by method {state['method']!r} but this run uses method {method!r}; "
            f"resume with method={state['method']!r}, or start afresh without resume_from_checkpoint"
        )
    if tuple(state["objectives"]) != tuple(objectives):
        raise ValueError(
            f"checkpoint {folder} balances the objectives {tuple(state['objectives'])} but this run has "
            f"{tuple(objectives)}; resume with the same objectives"
        )
    return state


def is_complete(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, TRAINER_STATE_NAME)) and os.path.isfile(
        os.path.join(folder, STATE_NAME)
    )


def last_complete_checkpoint(output_dir: str) -> tuple[str | None, list[str]]:
    """The newest complete ``checkpoint-N`` under ``output_dir`` and the newer incomplete ones it skipped."""
    if not os.path.isdir(output_dir):
        return None, []
    steps = sorted(
        (int(match.group(1)), name)
        for name in os.listdir(output_dir)
        if (match := _CHECKPOINT_DIR.match(name)) and os.path.isdir(os.path.join(output_dir, name))
    )
    skipped = []
    for _, name in reversed(steps):
        folder = os.path.join(output_dir, name)
        if is_complete(folder):
            return folder, skipped
        skipped.append(folder)
    return None, skipped


def restore_student(model: nn.Module, checkpoint: str) -> bool:
    """Load a checkpoint's student weights through ``from_pretrained`` and copy them in strictly.

    Returns False (nothing done) when ``model`` is not a ``PreTrainedModel`` or the folder has no
    config; the Trainer's own loading applies then.
    """
    if not isinstance(model, PreTrainedModel) or not os.path.isfile(os.path.join(checkpoint, "config.json")):
        return False
    dtype = next(model.parameters()).dtype
    reloaded = type(model).from_pretrained(checkpoint, dtype=dtype)
    try:
        model.load_state_dict(reloaded.state_dict(), strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"checkpoint {checkpoint} does not hold this student's weights ({str(error)[:300]}); resume with the "
            "model that wrote it"
        ) from error
    return True
