"""The frozen teacher: loaded by Hub id or given as an instance, placed for the backend, fed its own inputs.

``DistillationTeacher`` (after timm's class of the same name) holds what every task needs of the teacher:

* ``load_teacher``: the model (``from_pretrained`` through the task's loader when given by Hub id or folder,
  with ``teacher_model_init_kwargs``) and its image processor; a teacher that is the student, or shares a
  weight with it, is refused before anything is frozen;
* the label mapping (``label_index``: which teacher output is each student class, from the label names or
  ``teacher_label_indices``), checked by the task that compares classes;
* ``pixels``: the student's normalised pixels converted to the teacher's size and normalisation
  (``teacher_inputs.py``), or the batch's ``teacher_pixel_values`` column unchanged;
* ``forward``: the no-grad forward under the Trainer's autocast context; a sharded (FSDP2) teacher is
  resharded after it, as it has no backward to do so;
* ``cache``: with ``teacher_cache=True``, its signal of every training row computed once, as a column
  (``teacher_cache.py``).

The teacher is frozen and placed by ``runtime.backends.prepare_teacher`` (never wrapped in DDP).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from hf_dtokd.models.classification import check_teacher_is_not_the_student, load_image_processor
from hf_dtokd.runtime.backends import prepare_teacher, reshard
from hf_dtokd.trainer.teacher_cache import add_teacher_logits, check_cacheable
from hf_dtokd.trainer.teacher_inputs import PixelSpace, TeacherInputConverter

logger = logging.getLogger(__name__)

#: the batch column that overrides the teacher's input pixels
TEACHER_PIXELS = "teacher_pixel_values"


def load_teacher(
    teacher_model: nn.Module | str | None,
    args: Any,
    teacher_processing_class: Any | None,
    loader: Callable[..., nn.Module],
    student: nn.Module | None = None,
) -> tuple[nn.Module, Any | None]:
    """The teacher instance (loaded with ``loader`` when given by Hub id / folder) and its processor; refused
    when it is ``student`` or shares a weight with it (before anything is frozen)."""
    teacher_model = teacher_model if teacher_model is not None else args.teacher_model_name_or_path
    if teacher_model is None:
        raise ValueError("no teacher: pass teacher_model=... or set DTOKDConfig.teacher_model_name_or_path")
    if isinstance(teacher_model, str):
        teacher_id = teacher_model
        teacher_model = loader(teacher_id, "teacher", **(args.teacher_model_init_kwargs or {}))
        teacher_model._hf_dtokd_loaded = True  # the init kwargs were applied
        if teacher_processing_class is None:
            teacher_processing_class = load_image_processor(teacher_id)
    elif args.teacher_model_init_kwargs and not getattr(teacher_model, "_hf_dtokd_loaded", False):
        raise ValueError(
            "teacher_model_init_kwargs is set but the teacher was given as an instance; the kwargs would be "
            "ignored. Pass the teacher as a Hub id / path, or drop the kwargs"
        )
    if student is not None:
        check_teacher_is_not_the_student(student, teacher_model)
    return teacher_model, teacher_processing_class


def model_name(model: nn.Module) -> str:
    """A model's Hub id / folder when it has one, else its class name."""
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", "") or type(model).__name__


class DistillationTeacher:
    """The frozen, placed teacher of one run and how its inputs are made (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        accelerator: Accelerator,
        student_processor: Any | None = None,
        teacher_processor: Any | None = None,
        label_index: torch.Tensor | None = None,
        forward_kwargs: dict[str, Any] | None = None,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        self.name = model_name(model)
        #: the model's own config: once prepared, a DeepSpeed engine's ``config`` is DeepSpeed's dict
        self.config = getattr(model, "config", None)
        self.accelerator = accelerator
        self.fsdp2 = bool(getattr(accelerator, "is_fsdp2", False))
        self.model = prepare_teacher(model, accelerator)
        self.label_index = label_index
        self.forward_kwargs = dict(forward_kwargs or {})
        self.autocast = autocast
        self.converter = _converter(student_processor, teacher_processor)

    def pixels(
        self, student_pixels: torch.Tensor, teacher_pixels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The teacher's pixels: the ``teacher_pixel_values`` column when given, else the student's converted
        (unchanged when the two processors agree or one is missing)."""
        if teacher_pixels is not None:
            return teacher_pixels
        return student_pixels if self.converter is None else self.converter(student_pixels)

    def forward(self, inputs: dict[str, Any]) -> Any:
        """The frozen teacher's outputs on ``inputs`` (no grad, the Trainer's autocast)."""
        with torch.no_grad(), self.autocast():
            outputs = self.model(**inputs, **self.forward_kwargs)
        if self.fsdp2:  # a sharded teacher has no backward to free its gathered root
            reshard(self.model)
        return outputs

    def cache(
        self,
        dataset: Any,
        signal: Callable[[dict[str, Any]], torch.Tensor],
        data_collator: Any,
        batch_size: int,
    ) -> Any:
        """``dataset`` (a ``datasets.Dataset`` without on-the-fly transform) with ``signal`` of each row's pixels
        (and ``teacher_pixel_values``) as a ``teacher_logits`` column, computed once over every process."""
        if dataset is None:
            raise ValueError("teacher_cache=True needs a train_dataset to cache the teacher's logits for")
        check_cacheable(dataset, data_collator)
        columns = ["pixel_values", *([TEACHER_PIXELS] if TEACHER_PIXELS in dataset.column_names else [])]
        # every process together (no main_process_first: a sharded teacher needs all ranks in each forward)
        return add_teacher_logits(dataset, signal, columns, batch_size, self.accelerator)

    def map_classes(self, logits: torch.Tensor, keep_last: bool = False) -> torch.Tensor:
        """The teacher's class outputs in the student's class order (``keep_last``: a trailing "no object"
        output kept last); unchanged when the label spaces agree."""
        if self.label_index is None:
            return logits
        index = self.label_index.to(logits.device)
        if keep_last:
            index = torch.cat([index, index.new_tensor([logits.shape[-1] - 1])])
        dim = 1 if logits.dim() == 4 else -1  # per-pixel maps (B, C, H, W); else the last dimension
        return logits.index_select(dim, index)


def _converter(student_processor: Any | None, teacher_processor: Any | None) -> TeacherInputConverter | None:
    if student_processor is None or teacher_processor is None:
        logger.info(
            "the teacher receives the student's pixel_values unchanged (%s image processor missing). Pass "
            "processing_class and teacher_processing_class to resize / re-normalise, or add a "
            "'teacher_pixel_values' column.",
            "student" if student_processor is None else "teacher",
        )
        return None
    converter = TeacherInputConverter(
        PixelSpace.from_processor(student_processor), PixelSpace.from_processor(teacher_processor)
    )
    return None if converter.is_identity else converter
