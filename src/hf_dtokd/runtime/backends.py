"""Distributed backends: which method runs where, the backward call, and how the frozen teacher is placed.

Semantics on ``P`` processes (each holds the same ``pi`` and state, and runs the same collectives
in the same order):

* gradient methods at the parameters (``dto``, the torchjd weightings, DOT): the per-loss gradient
  buffers are all-reduced (mean) at the window's end, so ``pi`` is computed from the global-batch
  gradients: the run equals one process with the global batch. Under FSDP2 the Gram methods keep
  one local shard per objective (one backward each, reduce-scattered by FSDP2) and all-reduce the
  ``K x K`` Gram instead (``gradients/sharded.py``). DeepSpeed (the engine reduces the gradients into
  its own partitioned buffers inside ``backward`` and steps from them), FSDP1, and DOT under any
  sharding are refused at start, naming ``gradient_placement="representation"`` (one backward of the
  balanced loss; not for DOT) and the weighted-loss methods;
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

import contextlib
import copy
from collections.abc import Iterator
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
    fsdp2: bool = False,
    gram_parameters: str = "all",
    one_loss_parameters: str = "weighted",
    batched_gradients: bool = False,
) -> None:
    """Refuse, at start and with the alternative, a method / backend combination that cannot be correct."""
    if not needs_gradients or placement == "representation":
        return
    if fsdp2 and not deepspeed and not owns_update:  # sharded per-loss gradients (gradients/sharded.py)
        _check_sharded_options(method, gram_parameters, one_loss_parameters, batched_gradients)
    elif deepspeed or fsdp:
        alternatives = (
            "method='dto_amortized' or 'fixed', or plain DDP"
            if owns_update
            else "gradient_placement='representation' (gradients at a layer every loss shares, one backward), "
            "method='dto_amortized', FSDP2 (fsdp_version: 2), or plain DDP"
        )
        if deepspeed:
            reason = (
                "DeepSpeed reduces the gradients into its own partitioned buffers inside its backward and steps "
                "from them, so no per-loss gradient can be read or written back"
            )
        elif owns_update:
            reason = "FSDP shards the gradients and DOT's update reads which parameters each loss reaches"
        else:
            reason = "FSDP1 shards the gradients (FSDP2 supports it)"
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


def _check_sharded_options(
    method: str, gram_parameters: str, one_loss_parameters: str, batched_gradients: bool
) -> None:
    why = (
        "under FSDP2 the autograd graph holds the gathered parameters, not the sharded ones, so which parameters "
        "each loss reaches cannot be read off it"
    )
    if gram_parameters == "shared":
        raise ValueError(
            f"method={method!r} with gram_parameters='shared': {why}; use gram_parameters='all' or 'student', or "
            "plain DDP"
        )
    if one_loss_parameters == "own":
        raise ValueError(
            f"method={method!r} with one_loss_parameters='own': {why}; use one_loss_parameters='weighted', or "
            "plain DDP"
        )
    if batched_gradients:
        raise ValueError(
            "batched_gradients batches the autograd.grad calls of the per-loss gradients; under FSDP2 they come "
            "from one backward per objective instead (FSDP2 reduce-scatters only in a backward). Leave it False"
        )


def backward(accelerator: Accelerator, loss: torch.Tensor, retain_graph: bool = False) -> None:
    """A backward through accelerate (the micro-batch's single one, or under FSDP2 one per objective with the
    graph retained). Losses are already divided by the accumulation steps, so DeepSpeed must not divide again
    (``scale_wrt_gas=False``, as ``Trainer.training_step`` does)."""
    kwargs = {"retain_graph": True} if retain_graph else {}
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.backward(loss, scale_wrt_gas=False, **kwargs)
    else:
        accelerator.backward(loss, **kwargs)


@contextlib.contextmanager
def inside_the_engine_backward(model: torch.nn.Module) -> Iterator[None]:
    """Per-loss gradients at a representation (``autograd.grad``) without DeepSpeed ending the backward early.

    A DeepSpeed engine (0.16+) hooks the outputs of its forward so that a plain ``loss.backward()`` works: the
    first backward through them opens its backward state, and when that graph finishes the engine reduces
    and partitions the gradients, unless the engine's own ``backward`` is running. An ``autograd.grad`` from a
    loss to a layer passes through those outputs too, and would reduce gradients that do not exist yet. Inside
    this context the engine counts as running its ``backward`` (its own counter, as ``engine.backward`` sets it),
    so the side call only opens the backward state, which the micro-batch's ``engine.backward`` then closes
    after reducing the real gradients. The side call's gradients pass the engine's hook divided by the
    accumulation steps, every loss alike (the Gram's scale, which no weighting reads). No kept library offers
    this switch; any other model: nothing to do.
    """
    lock = getattr(model, "_running_engine_backward_lock", None)
    if lock is None:
        yield
        return
    with lock:
        model._running_engine_backward_count += 1
        model._running_engine_backward = True
    try:
        yield
    finally:
        with lock:
            model._running_engine_backward_count -= 1
            model._running_engine_backward = model._running_engine_backward_count > 0


def deepspeed_teacher_config(training_config: dict[str, Any]) -> dict[str, Any]:
    """A DeepSpeed config for the frozen teacher from the student's: no optimizer or scheduler, ZeRO-3 kept
    (the teacher is sharded like the student), any other stage replaced by 0 (a replicated inference engine)."""
    config = copy.deepcopy(training_config)
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    if config.get("zero_optimization", {}).get("stage", 0) != 3:
        config["zero_optimization"] = {"stage": 0}
    return config


def allow_fsdp2_sharding(model: torch.nn.Module) -> torch.nn.Module:
    """Let accelerate's ``fsdp2_prepare_model`` shard a vision model (in place; returns the model).

    ``fsdp2_prepare_model`` (accelerate 1.16) gives ``model.get_input_embeddings()`` an FSDP unit of its own
    after wrapping the model's ``_no_split_modules``. Two vision cases break it, on GPUs as here:
    transformers (5.x) raises ``NotImplementedError`` for models without token embeddings (ResNet,
    ConvNeXt, RT-DETR, ...), and a ViT's patch embedding sits inside ``ViTEmbeddings``, a no-split module
    already sharded, so sharding it again fails. Such a model answers ``None`` (what accelerate expects of a
    model without embeddings; the embedding stays in the unit that holds it). No kept library offers the
    switch, hence the override of the instance's method.
    """
    getter = getattr(model, "get_input_embeddings", None)
    if getter is None:
        return model
    try:
        embeddings = getter()
    except NotImplementedError:
        embeddings = None
    no_split = set(getattr(model, "_no_split_modules", None) or ())
    inside_a_unit = embeddings is not None and any(
        type(module).__name__ in no_split and module is not embeddings and embeddings in module.modules()
        for module in model.modules()
    )
    if embeddings is None or inside_a_unit:
        model.get_input_embeddings = lambda: None
    return model


def reshard(model: torch.nn.Module) -> None:
    """Free the parameters FSDP2 left gathered after a forward without backward (the teacher, a look-ahead).

    FSDP2 keeps the root unit's parameters gathered after its forward (the backward would need them at once) and
    reshards them in the backward. A forward under ``no_grad`` between ``optimizer.step()`` and
    ``zero_grad()`` (the amortized methods' look-ahead) has no backward: ``model.parameters()`` then yields the
    gathered tensors, ``zero_grad`` clears their (empty) gradients instead of the sharded ones, and the next
    window would accumulate onto the last one's; a sharded teacher, never backpropagated, would hold its root unit
    gathered for the whole run. Resharding every FSDP unit restores the sharded parameters.
    Nothing to do for other backends.
    """
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch build without FSDP2
        return
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


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

        # fsdp2_prepare_model fixes the plugin's wrap policy to the first model's layer classes: the teacher gets
        # a copy, so the student is wrapped by its own layers (a ResNet teacher's would not exist in a ViT)
        plugin = accelerator.state.fsdp_plugin
        accelerator.state.fsdp_plugin = copy.copy(plugin)
        try:
            sharded = fsdp2_prepare_model(accelerator, allow_fsdp2_sharding(teacher.to(accelerator.device)))
        finally:
            accelerator.state.fsdp_plugin = plugin
        return prepare_frozen(sharded)
    if accelerator.distributed_type == DistributedType.FSDP:
        return prepare_frozen(accelerator.prepare_model(teacher))
    return prepare_frozen(accelerator.prepare_model(teacher, evaluation_mode=True))
