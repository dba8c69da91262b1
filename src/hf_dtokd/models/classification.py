"""Loading students and teachers (transformers and timm models) and checking they can be paired."""

from __future__ import annotations

import os
import re
from typing import Any

import torch
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, PreTrainedModel

OFFLINE_HINT = (
    "If this machine is offline, download the model elsewhere and pass its local folder (saved with "
    "save_pretrained), or set HF_HUB_OFFLINE=1 with the model already in the Hugging Face cache."
)


def check_model_reference(name_or_path: str, role: str) -> None:
    """Before any network call: a ``name_or_path`` that is neither an existing folder nor a valid Hub id
    (``name`` or ``namespace/name``; huggingface_hub's own rule) is refused, naming both readings."""
    if os.path.isdir(name_or_path):
        return
    if os.path.exists(name_or_path):
        raise ValueError(
            f"the {role} {name_or_path!r} is a file, not a model folder: pass the folder that holds its "
            "config.json and weights (as written by save_pretrained), or a Hub id"
        )
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        raise ValueError(
            f"the {role} {name_or_path!r} is neither a local folder (no such folder, seen from "
            f"{os.getcwd()}) nor a Hub id (name or namespace/name): check the path (a folder written by save_pretrained), or pass a Hub id"
        ) from None


def load_image_classifier(
    name_or_path: str, role: str, from_scratch: bool = False, **init_kwargs: Any
) -> PreTrainedModel:
    """``AutoModelForImageClassification.from_pretrained`` (``timm/...`` ids load through TimmWrapper).

    ``from_scratch``: the architecture only (``AutoConfig.from_pretrained`` then ``from_config``), freshly
    initialised, as DeiT trains its students. ``role`` ("teacher" / "student") names the model in the error
    raised when it cannot be loaded.
    """
    check_model_reference(name_or_path, role)
    try:
        if from_scratch:
            init_kwargs.pop("ignore_mismatched_sizes", None)
            config = AutoConfig.from_pretrained(name_or_path, **init_kwargs)
            return AutoModelForImageClassification.from_config(config)
        return AutoModelForImageClassification.from_pretrained(name_or_path, **init_kwargs)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(
            f"could not load the {role} {name_or_path!r}{_no_folder(name_or_path)}: {error}\n{OFFLINE_HINT}"
        ) from error


def _no_folder(name_or_path: str) -> str:
    """Said when a Hub-id-shaped name failed to load: it was not a local folder either."""
    return (
        ""
        if os.path.isdir(name_or_path)
        else f" (no local folder of that name in {os.getcwd()}; read as a Hub id)"
    )


def load_image_processor(name_or_path: str) -> Any | None:
    """The image processor saved beside a model, or None when the model has none."""
    try:
        return AutoImageProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError, KeyError):
        return None


def check_teacher_is_not_the_student(student: torch.nn.Module, teacher: torch.nn.Module) -> None:
    """Refuse a teacher that is the student object or shares weights with it: the teacher is frozen
    (``requires_grad_(False)``), which would freeze the student's shared weights, and a teacher whose weights
    train with the student is no fixed target."""
    fix = (
        "pass a teacher with weights of its own: a trained model loaded by Hub id or folder, or a copy "
        "(copy.deepcopy(model)) if distilling a model into itself is really meant"
    )
    if teacher is student:
        raise ValueError(f"the teacher is the student object itself (a {type(student).__name__}); {fix}")
    owned = {id(p) for p in student.parameters()}
    storages = {p.data_ptr() for p in student.parameters() if p.numel() and p.data_ptr()}
    shared = [
        name
        for name, p in teacher.named_parameters()
        if id(p) in owned or (p.numel() and p.data_ptr() and p.data_ptr() in storages)
    ]
    if shared:
        shown = ", ".join(shared[:3]) + (f" and {len(shared) - 3} more" if len(shared) > 3 else "")
        raise ValueError(
            f"the teacher shares {len(shared)} weight tensor(s) with the student ({shown}); {fix}"
        )


def prepare_frozen(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and no gradients: what a teacher must be before any forward."""
    model.eval()
    model.requires_grad_(False)
    return model


_DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")


def _named_labels(model: PreTrainedModel) -> dict[int, str] | None:
    id2label = getattr(model.config, "id2label", None) or {}
    labels = {int(k): str(v) for k, v in id2label.items()}
    if not labels or all(_DEFAULT_LABEL.match(v) for v in labels.values()):
        return None
    return labels


def num_labels(model: PreTrainedModel) -> int:
    return int(model.config.num_labels)


def check_label_spaces(
    student: PreTrainedModel, teacher: PreTrainedModel, teacher_label_indices: list[int] | None
) -> torch.Tensor | None:
    """Raise unless the teacher's logits can be compared class by class with the student's.

    Returns the index tensor that selects, for each student class, the teacher's logit (None when the
    label spaces are identical).
    """
    n_student, n_teacher = num_labels(student), num_labels(teacher)
    if teacher_label_indices is not None:
        if len(teacher_label_indices) != n_student:
            raise ValueError(
                f"teacher_label_indices has {len(teacher_label_indices)} entries but the student has {n_student} "
                "classes; give one teacher class index per student class"
            )
        bad = [i for i in teacher_label_indices if not 0 <= i < n_teacher]
        if bad:
            raise ValueError(
                f"teacher_label_indices {bad} are outside the teacher's classes [0, {n_teacher})"
            )
        return torch.tensor(teacher_label_indices, dtype=torch.long)
    if n_student != n_teacher:
        raise ValueError(
            f"the teacher has {n_teacher} classes and the student {n_student}: their label spaces differ. Give the "
            "student the teacher's id2label, or pass teacher_label_indices (one teacher class per student class)"
        )
    student_labels, teacher_labels = _named_labels(student), _named_labels(teacher)
    if student_labels is not None and teacher_labels is not None and student_labels != teacher_labels:
        diff = {
            i: (student_labels.get(i), teacher_labels.get(i))
            for i in student_labels
            if student_labels.get(i) != teacher_labels.get(i)
        }
        shown = dict(list(diff.items())[:5])
        raise ValueError(
            f"student and teacher id2label differ at {len(diff)} classes (student, teacher): {shown}. Pass "
            "teacher_label_indices to map student classes to teacher classes, or align the configs' id2label"
        )
    return None


def classification_logits(outputs: Any) -> torch.Tensor:
    """The logits of an image classifier's output (a ModelOutput, a dict or a tensor)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = outputs["logits"] if isinstance(outputs, dict) or hasattr(outputs, "keys") else None
    if logits is None:
        raise ValueError(
            f"the model returned {type(outputs).__name__} without 'logits'; an image classifier is needed"
        )
    return logits
