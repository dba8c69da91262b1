"""The trainable module of distillation with projectors, and how it is saved, checkpointed and resumed.

The Trainer optimises, wraps (DDP / FSDP), clips and checkpoints ``self.model`` only, so the student
and every projector live in one module, ``StudentWithProjectors``; the frozen teacher stays outside
(timm's ``FeatureDistillationTrainableModule`` is the model of this). ``ProjectorCheckpointsMixin``
makes saving and pushing write the student alone with ``save_pretrained`` (it reloads with the Auto
class), puts the projectors in every checkpoint (``projectors.safetensors``) so that a resumed run
continues exactly, and offers ``export_projectors``. Trainers whose model is not wrapped fall through
to the base behaviour.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from accelerate.utils import DistributedDataParallelKwargs
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.trainer import TRAINING_ARGS_NAME

from hf_dtokd.trainer.checkpoints import restore_student

PROJECTORS_NAME = "projectors.safetensors"


class StudentWithProjectors(nn.Module):
    """The trainable module: the student (a ``PreTrainedModel``) and one projector per stage pair."""

    def __init__(
        self,
        student: nn.Module,
        projectors: nn.ModuleList,
        pairs: list[tuple[int, int]],
        output_hidden_states: bool = True,
    ) -> None:
        super().__init__()
        self.student, self.projectors, self.pairs = student, projectors, pairs
        self.output_hidden_states = output_hidden_states
        self.config = student.config  # what the Trainer reads (labels, names)

    def forward(self, pixel_values: torch.Tensor, **kwargs: Any) -> Any:
        if self.output_hidden_states:
            kwargs["output_hidden_states"] = True
        return self.student(pixel_values=pixel_values, **kwargs)


class ProjectorCheckpointsMixin:
    """DDP, saving, checkpointing and resuming for a Trainer whose model may be a ``StudentWithProjectors``."""

    def training_only_parameters(self) -> list[nn.Parameter]:
        """The projectors' parameters (``gram_parameters='student'`` leaves them out of the Gram)."""
        model = self.accelerator.unwrap_model(self.model)
        if isinstance(model, StudentWithProjectors):
            return list(model.projectors.parameters())
        return super().training_only_parameters()

    def _build_accelerator_args(self, **kwargs: Any) -> dict[str, Any]:
        """DDP with ``find_unused_parameters=False`` for the wrapper (the Trainer's default for it is True).

        The projectors run after the wrapped forward, on its outputs: DDP's search for unused parameters
        marks them ready when the forward ends, and the backward that reaches them marks them again, an
        error ("Expected to mark a variable ready only once"). Every parameter gets its gradient in the
        backward (one-backward methods) or from the trade-off's own all-reduced per-loss gradients.
        """
        args = super()._build_accelerator_args(**kwargs)
        if not isinstance(self.model, StudentWithProjectors):
            return args
        if self.args.ddp_find_unused_parameters:
            raise ValueError(
                "ddp_find_unused_parameters=True cannot be used with projectors: they run outside the DDP forward "
                "and DDP would mark them ready twice. Leave it unset (or False)"
            )
        args["kwargs_handlers"] = [
            dataclasses.replace(h, find_unused_parameters=False)
            if isinstance(h, DistributedDataParallelKwargs)
            else h
            for h in args.get("kwargs_handlers", [])
        ]
        return args

    def _wrapper(self, model: nn.Module | None = None) -> StudentWithProjectors | None:
        unwrapped = self.accelerator.unwrap_model(model if model is not None else self.model)
        return unwrapped if isinstance(unwrapped, StudentWithProjectors) else None

    @property
    def student(self) -> nn.Module:
        wrapper = self._wrapper()
        return wrapper.student if wrapper is not None else self.accelerator.unwrap_model(self.model)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Write the student alone (``save_pretrained``), its processor and the training arguments."""
        if self._wrapper() is None:
            super()._save(output_dir, state_dict)
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        if state_dict is not None:  # a gathered state dict (FSDP / DeepSpeed): the student's entries only
            state_dict = {k[len("student.") :]: v for k, v in state_dict.items() if k.startswith("student.")}
        self.student.save_pretrained(output_dir, state_dict=state_dict)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def export_projectors(self, path: str) -> None:
        """Write the projectors' weights (safetensors) to ``path``."""
        wrapper = self._wrapper()
        if wrapper is None:
            raise ValueError(
                "this run has no projectors to export (the model is not a StudentWithProjectors)"
            )
        projectors = wrapper.projectors
        save_file({k: v.detach().cpu().contiguous() for k, v in projectors.state_dict().items()}, path)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save and self._wrapper() is not None:
            self.export_projectors(os.path.join(output_dir, PROJECTORS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        wrapper = self._wrapper(model)
        if wrapper is None:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        path = os.path.join(resume_from_checkpoint, PROJECTORS_NAME)
        if not os.path.isfile(path):
            raise ValueError(
                f"checkpoint {resume_from_checkpoint} has no {PROJECTORS_NAME}: it was not written by a run with "
                "projectors (FeatureKDTrainer, DetectionKDTrainer with token_projector); resume from one of its "
                "checkpoints"
            )
        if not restore_student(wrapper.student, resume_from_checkpoint):
            raise ValueError(
                f"checkpoint {resume_from_checkpoint} holds no student saved with save_pretrained"
            )
        state = load_file(path, device=str(next(wrapper.projectors.parameters()).device))
        missing = set(wrapper.projectors.state_dict()) - set(state)
        if missing and all(key.endswith(".0.base") for key in missing):
            raise ValueError(
                f"the orthogonal projectors in {path} were saved with the Householder map, which weight decay "
                "turned into a zero matrix from the first optimizer step (their token / feature KD taught the "
                "student nothing); they cannot be resumed: start the run again"
            )
        try:
            wrapper.projectors.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ValueError(
                f"the projectors in {path} do not fit this run's ({str(error)[:200]}); resume with the same "
                "projector kind and stages"
            ) from error
