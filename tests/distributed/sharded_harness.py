"""Run accelerate's real FSDP2 and DeepSpeed code paths on CPU (2 gloo processes). Test-only: never in the library.

What accelerate does on a machine without GPUs, and what this harness changes:

* ``accelerate launch --config_file fsdp2.yaml`` (or a DeepSpeed YAML) starts the processes and exports
  ``ACCELERATE_USE_FSDP`` / ``ACCELERATE_USE_DEEPSPEED`` with the plugin's settings, but ``use_cpu: false``:
  in the process, ``PartialState`` finds no device backend and runs as one process (``num_processes``
  1, no process group). The harness sets ``ACCELERATE_USE_CPU=true`` first, so the state joins the gloo
  group of the launched processes (``MULTI_CPU``, ``num_processes`` 2), as DDP on CPU does.
* ``AcceleratorState`` then puts the run in FSDP mode only for GPU-like multi-process types, and in
  DeepSpeed mode only when not on CPU. The harness wraps ``AcceleratorState.__init__``: right after it,
  a ``MULTI_CPU`` state with one of those flags gets ``distributed_type`` ``FSDP`` (with the FSDP plugin
  accelerate built from the launcher's variables) or ``DEEPSPEED`` (the DeepSpeed plugin selected, mixed
  precision left to DeepSpeed's config), the two assignments the GPU branch makes. Everything after it
  is accelerate's and transformers' own code: ``Trainer`` sees ``is_fsdp_enabled`` /
  ``is_deepspeed_enabled``, ``prepare`` calls ``fsdp2_prepare_model`` or ``deepspeed.initialize`` (its
  CPU accelerator, gloo), checkpoints go through accelerate's sharded save and load.

On GPUs the same launch gets NCCL, CUDA devices and DeepSpeed's fused kernels; nothing here changes the
maths of a step.
"""

from __future__ import annotations

import os

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_ORIGINAL_INIT = AcceleratorState.__init__


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def _init_then_take_the_sharded_branch(self: AcceleratorState, *args, **kwargs) -> None:
    _ORIGINAL_INIT(self, *args, **kwargs)
    if self.distributed_type != DistributedType.MULTI_CPU:
        return
    if _flag("ACCELERATE_USE_FSDP") and kwargs.get("fsdp_plugin") is not None:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = kwargs["fsdp_plugin"]
    elif _flag("ACCELERATE_USE_DEEPSPEED") and kwargs.get("deepspeed_plugin") is not None:
        plugin = kwargs["deepspeed_plugin"]
        self.distributed_type = DistributedType.DEEPSPEED
        self._mixed_precision = "no"  # DeepSpeed reads its precision from its own config
        plugin.set_mixed_precision(kwargs.get("mixed_precision") or "no")
        plugin.select(_from_accelerator_state=True)
        self.deepspeed_plugins = plugin
    else:
        return
    PartialState._shared_state["distributed_type"] = self.distributed_type


def enable() -> str:
    """Apply the adjustment (idempotent) and name the backend the launcher asked for."""
    os.environ["ACCELERATE_USE_CPU"] = "true"
    AcceleratorState.__init__ = _init_then_take_the_sharded_branch
    if _flag("ACCELERATE_USE_FSDP"):
        return "fsdp2"
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        return f"zero{os.environ.get('ACCELERATE_DEEPSPEED_ZERO_STAGE', '?')}"
    raise RuntimeError("launched without FSDP or DeepSpeed: use launch_sharded(<yaml>, ...)")
