"""Checkpoints that resume exactly: the trade-off state beside the Trainer's, and the student's weights.

* ``dtokd_state.pt`` holds the method's state (``pi``, the Gram weights, the FAMO logits or the
  uncertainty log-variances with their Adam moments, DOT's momentum buffers, ...) with the method's
  name, the objectives and a format version. It is written to a temporary file and renamed, so a
  crash while saving never leaves a truncated state behind. Loading refuses a state written by
  another method, for other objectives, or in an older layout, rather than silently restarting ``pi``.
* A checkpoint is *complete* when it holds ``trainer_state.json`` (the Trainer writes it last) and
  ``dtokd_state.pt``. ``resume_from_checkpoint=True`` picks the newest complete one; an explicit
  incomplete one is an error naming the fix.
* A file of the checkpoint that cannot be read (truncated or damaged: ``model.safetensors``, ``optimizer.pt``,
  ``dtokd_state.pt``, ``trainer_state.json``, ...) is named before anything is loaded
  (``check_readable``), with the earlier complete checkpoint to resume from instead; torch's and
  safetensors' own errors name neither.
* Student weights: transformers 5.23's ``save_pretrained`` writes some models (ViT, DeiT) in the Hub's
  original key layout while ``Trainer._load_from_checkpoint`` restores with a plain
  ``load_state_dict``: resuming leaves the renamed weights at their initial values with only a
  warning (huggingface/transformers#48805). ``restore_student`` loads the checkpoint through
  ``from_pretrained``, which maps the layout on every version, and copies the result in strictly.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
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
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises OSError / RuntimeError / UnpicklingError by case
        raise unreadable(folder, STATE_NAME, error) from error
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


def _checkpoint_step(folder: str) -> int | None:
    match = _CHECKPOINT_DIR.match(os.path.basename(os.path.normpath(folder)))
    return int(match.group(1)) if match else None


def earlier_checkpoint(folder: str) -> str | None:
    """The newest complete and readable ``checkpoint-M`` beside ``folder`` with ``M`` below its step."""
    step = _checkpoint_step(folder)
    parent = os.path.dirname(os.path.normpath(folder))
    if step is None or not os.path.isdir(parent):
        return None
    older = sorted(
        (found, name)
        for name in os.listdir(parent)
        if (found := _checkpoint_step(name)) is not None and found < step
    )
    for _, name in reversed(older):
        candidate = os.path.join(parent, name)
        if is_complete(candidate) and not _unreadable_files(candidate):
            return candidate
    return None


class CheckpointReadError(ValueError):
    """A checkpoint file that cannot be read; the message names it and the checkpoint to resume from."""


def unreadable(folder: str, name: str, error: BaseException) -> CheckpointReadError:
    earlier = earlier_checkpoint(folder)
    instead = (
        f"resume from the earlier checkpoint {earlier} (resume_from_checkpoint={earlier!r})"
        if earlier
        else "no earlier complete checkpoint exists beside it: start afresh without resume_from_checkpoint"
    )
    return CheckpointReadError(
        f"checkpoint file {os.path.join(folder, name)} cannot be read ({type(error).__name__}: {str(error)[:200]}): "
        f"it is truncated or damaged (an interrupted save, a full disk, a partial copy). Delete that checkpoint "
        f"and {instead}"
    )


def _unreadable_files(folder: str) -> list[tuple[str, BaseException]]:
    """Files of a checkpoint whose container cannot be opened: safetensors (header and coverage, checked by
    ``safe_open`` without reading the tensors), torch zip archives (``.pt`` / ``.pth`` / ``.bin``: the central
    directory at the end, which a truncation loses), JSON (parsed)."""
    from safetensors import safe_open

    bad = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        try:
            if name.endswith(".safetensors"):
                with safe_open(path, "pt"):
                    pass
            elif name.endswith((".pt", ".pth", ".bin")):
                with zipfile.ZipFile(path) as archive:
                    size = os.path.getsize(path)
                    for member in archive.infolist():
                        if member.header_offset + member.compress_size > size:
                            raise zipfile.BadZipFile(
                                f"member {member.filename} runs past the end of the file"
                            )
            elif name.endswith(".json"):
                with open(path, encoding="utf-8") as handle:
                    json.load(handle)
        except Exception as error:  # each format raises its own error type
            bad.append((name, error))
    return bad


def check_readable(folder: str) -> None:
    """Raise ``CheckpointReadError`` for the first file of ``folder`` that cannot be read (see above)."""
    bad = _unreadable_files(folder)
    if bad:
        name, error = bad[0]
        raise unreadable(folder, name, error)


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
