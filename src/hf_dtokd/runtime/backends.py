"""Distributed backends: which method runs where, the backward call, and how the frozen teacher is placed.

Semantics on ``P`` processes (each holds the same ``pi`` and state, and runs the same collectives
in the same order):

* gradient methods at the parameters (``dto``, the torchjd weightings, DOT): the per-loss gradient
  buffers are all-reduced (mean) at the window's end, so ``pi`` is computed from the global-batch
  gradients: the run equals one process with the global batch. This needs the full ``.grad`` of
  every parameter after the backward, which DDP gives and FSDP (sharded gradients) and DeepSpeed
  (the engine owns the gradients and steps inside ``backward``) do not: there they are refused at
  start, naming ``gradient_placement="representation"`` (one backward of the balanced loss; not
  for DOT) and the weighted-loss methods;
* representation placement: the micro-batch Gram is summed over processes (``gradients/representation.py``);
* weighted-loss methods (``fixed``, ``dto_amortized`` / ``famo``, ``uncertainty``): losses are
  all-reduced before any weight is computed, the backward is ``sum_i w_i L_i(local)`` with weights
  from the global losses, so DDP's gradient average is the single-process gradient.

Teacher placement: DDP / single process -> ``accelerator.prepare_model(evaluation_mode=True)``
(placed, never wrapped); FSDP2 -> sharded with accelerate's ``fsdp2_prepare_model``; FSDP1 ->
``prepare_model`` (FSDP-wrapped); DeepSpeed -> its own inference engine (ZeRO-3 shards it like the
student; other stages replicate it with ZeRO disabled), as trl does for its reference models.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from hf_dtokd.models.classification import prepare_frozen


def check_backend_support(
    method: str,
    placement: str,
    needs_gradients: bool,
    owns_update: bool,
    *,
    fsdp: bool,
    deepspeed: bool,
    fp16: bool,
) -> None:
    """Refuse, at start and with the alternative, a method / backend combination that cannot be correct."""
    if not needs_gradients or placement == "representation":
        return
    backend = "DeepSpeed" if deepspeed else "FSDP" if fsdp else None
    if backend is not None:
        alternatives = (
            "method='dto_amortized' or 'fixed', or plain DDP"
            if owns_update
            else "gradient_placement='representation' (gradients at a layer every loss shares, one backward), "
            "method='dto_amortized', or plain DDP"
        )
        reason = (
            "DeepSpeed owns the gradients and steps the optimizer inside backward"
            if deepspeed
            else "FSDP shards the gradients"
        )
        raise ValueError(
            f"method={method!r} needs the full per-loss gradient of every student parameter, but {reason}. Use "
            f"{alternatives}"
        )
    if fp16:
        raise ValueError(
            f"method={method!r} combines per-loss gradients itself and does not support fp16 loss scaling; use "
            "bf16=True"
            + ("" if owns_update else ", gradient_placement='representation'")
            + ", or method='dto_amortized'"
        )


def backward(accelerator: Accelerator, loss: torch.Tensor) -> None:
    """The micro-batch's single backward. Losses are already divided by the accumulation steps, so DeepSpeed
    must not divide again (``scale_wrt_gas=False``, as ``Trainer.training_step`` does)."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.backward(loss, scale_wrt_gas=False)
    else:
        accelerator.backward(loss)


def deepspeed_teacher_config(training_config: dict[str, Any]) -> dict[str, Any]:
    """A DeepSpeed config for the frozen teacher from the student's: no optimizer or scheduler, ZeRO-3 kept
    (the teacher is sharded like the student), any other stage replaced by 0 (a replicated inference engine)."""
    config = copy.deepcopy(training_config)
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    if config.get("zero_optimization", {}).get("stage", 0) != 3:
        config["zero_optimization"] = {"stage": 0}
    return config


def prepare_teacher(teacher: torch.nn.Module, accelerator: Accelerator) -> torch.nn.Module:
    """Freeze the teacher and place it for the backend (see the module docstring)."""
    teacher = prepare_frozen(teacher)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # No kept library prepares an auxiliary DeepSpeed model outside trl (not a dependency): one call.
        import deepspeed

        config = deepspeed_teacher_config(accelerator.state.deepspeed_plugin.deepspeed_config)
        engine, *_ = deepspeed.initialize(model=teacher, config=config)
        return prepare_frozen(engine)
    if getattr(accelerator, "is_fsdp2", False):
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        return prepare_frozen(fsdp2_prepare_model(accelerator, teacher.to(accelerator.device)))
    if accelerator.distributed_type == DistributedType.FSDP:
        return prepare_frozen(accelerator.prepare_model(teacher))
    return prepare_frozen(accelerator.prepare_model(teacher, evaluation_mode=True))
