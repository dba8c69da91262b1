"""fp8 training through accelerate: the recipe handed to the Trainer's Accelerator, and what it converts.

``TrainingArguments`` has no fp8 flag; accelerate enables it with ``mixed_precision="fp8"`` and a
recipe (``AORecipeKwargs`` for torchao, ``TERecipeKwargs`` for TransformerEngine). ``DTOKDConfig``'s
``fp8_backend`` injects both through the Trainer's accelerator-arguments hook, so the usual
``python train.py --fp8_backend ao`` (or ``accelerate launch``) works without an accelerate config.

What accelerate then does (read from accelerate 1.15's source, not re-implemented here):

* torchao: ``accelerator.prepare`` swaps the student's ``nn.Linear`` layers whose in and out
  features are both divisible by 16 for ``Float8Linear``, except the first and the last Linear
  (``accelerate.utils.ao.filter_linear_layers``); everything else runs in bf16 autocast;
* TransformerEngine: ``prepare`` converts Linear / LayerNorm layers to TE's and runs the forward
  under ``fp8_autocast`` (fp8 GEMMs need dimensions divisible by 16);
* the teacher is never passed to ``prepare`` (``prepare_model`` only), so it is not converted:
  it runs in the bf16 autocast that fp8 mode enables.

fp8 kernels need a GPU of compute capability >= 8.9 (H100, L4, ...). ``fp8_emulate=True`` (torchao
only) emulates them in higher precision: it runs anywhere, without a speed-up, which is how the
tests exercise this path on CPU.
"""

from __future__ import annotations

import importlib.util

from accelerate.utils import AORecipeKwargs, KwargsHandler, TERecipeKwargs
from accelerate.utils.ao import filter_linear_layers, find_first_last_linear_layers
from torch import nn

FP8_BACKENDS: dict[str, tuple[str, str]] = {
    "ao": ("torchao", 'pip install "hf-dtokd[fp8]"  (torchao)'),
    "te": ("transformer_engine", 'pip install "transformer_engine[pytorch]"  (needs CUDA)'),
}


def check_fp8_backend(backend: str, emulate: bool) -> None:
    """ValueError for an unknown backend, ImportError naming the package when it is not installed."""
    if backend not in FP8_BACKENDS:
        raise ValueError(f"unknown fp8_backend {backend!r}; valid values: {', '.join(FP8_BACKENDS)}")
    module, install = FP8_BACKENDS[backend]
    if importlib.util.find_spec(module) is None:
        raise ImportError(
            f"fp8_backend={backend!r} needs the {module!r} package, which is not installed: {install}"
        )
    if emulate and backend != "ao":
        raise ValueError("fp8_emulate is torchao's emulation mode; use fp8_backend='ao' with it")


def fp8_recipe(backend: str, emulate: bool = False) -> KwargsHandler:
    """The accelerate recipe for ``backend`` ("ao" or "te"), with accelerate's defaults."""
    check_fp8_backend(backend, emulate)
    if backend == "te":
        return TERecipeKwargs()
    from torchao.float8 import Float8LinearConfig

    # accelerate's default torchao config (pad_inner_dim, fp8 all-gather under FSDP2) plus `emulate`
    return AORecipeKwargs(
        config=Float8LinearConfig(pad_inner_dim=True, enable_fsdp_float8_all_gather=True, emulate=emulate)
    )


def fp8_convertible_layers(model: nn.Module) -> list[str]:
    """Names of the Linear layers torchao's recipe (through accelerate) converts to fp8 in ``model``."""
    first, last = find_first_last_linear_layers(model)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and filter_linear_layers(module, name, layers_to_filter=[first, last])
    ]
