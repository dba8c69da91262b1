"""Per-loss gradients at a representation every loss shares (MGDA-UB, Sener & Koltun 2018).

With ``gradient_placement="representation"`` the Gram methods take the gradients of the losses
with respect to the output ``Z`` of one student layer instead of all parameters::

    a_k = dL_k / dZ          (batch x features, one small backward from each loss down to Z)
    G_ij = <a_i, a_j>        (K x K, float64)

``pi`` and the raw-loss weights ``w`` follow from ``G`` as usual, then ONE backward of
``sum_k w_k L_k`` gives every parameter below ``Z`` the exact combination ``sum_k w_k grad L_k``
(the chain rule is linear in the upstream gradient). Only ``pi`` differs from the parameter
placement: it is the min-norm point for the Jacobian at ``Z`` (an upper bound of the parameter
Gram's objective, up to the Jacobian of the layers below), not at the parameters.

Because the weights must be known before the micro-batch's single backward, ``pi`` is set per
micro-batch: under gradient accumulation each micro-batch gets the ``pi`` of its own Gram, not the
window's (holding every micro-batch's graph until the window ends would undo what accumulation saves).

Under data parallelism the micro-batch Gram is exact for the global micro-batch: samples sit on
disjoint rows of ``Z``, so ``G = sum_r G_r / P^2`` for ``P`` processes whose local losses are means
over equal local batches. Every rank then holds the same ``pi``.

Trap: at a layer where the losses touch disjoint coordinates (separate heads, e.g.
DeiT's class and distillation tokens), ``G_ij = 0`` and conflict is invisible. The first Gram
checks it and raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

#: The last layer every loss computed from the head shares, per model family (``config.model_type``).
#: Candidates are tried in order; the first that exists and is not an ``nn.Identity`` is taken.
FAMILY_LAYERS: dict[str, tuple[str, ...]] = {
    "vit": ("vit.layernorm",),
    "deit": ("deit.layernorm",),
    "swin": ("swin.layernorm",),
    "convnext": ("convnext.layernorm",),
    "resnet": ("resnet.pooler",),
    "regnet": ("regnet.pooler",),
    "timm_wrapper": ("timm_model.norm", "timm_model.head.norm", "timm_model.global_pool"),
}
LOGITS = "logits"


def resolve_representation_layer(
    model: nn.Module, layer: str, logit_objectives_only: bool, default: str | None = None
) -> str:
    """The layer name to capture (``"logits"`` or a module of ``model``), or a ValueError naming the options.

    ``"auto"``: the logits when every objective is computed from them (plain logit KD), else ``default``
    (a trainer's choice, e.g. the DeiT token trainer's) or the family's entry of ``FAMILY_LAYERS``.
    """
    if layer == LOGITS or (layer == "auto" and logit_objectives_only):
        return LOGITS
    modules = dict(model.named_modules())
    if layer != "auto":
        if layer not in modules:
            close = [name for name in modules if name and layer.split(".")[-1] in name][:8]
            raise ValueError(
                f"representation_layer={layer!r} is not a module of the student {type(model).__name__}; use 'auto', "
                f"'logits' or a name from model.named_modules(){f' (similar: {close})' if close else ''}"
            )
        return layer
    if default is not None:
        return default
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for name in FAMILY_LAYERS.get(model_type, ()):
        if name in modules and not isinstance(modules[name], nn.Identity):
            return name
    raise ValueError(
        f"representation_layer='auto' has no entry for the student family {model_type!r} (known: "
        f"{', '.join(FAMILY_LAYERS)}) and the objectives are not all computed from the logits; set "
        "representation_layer to a module name every loss depends on (model.named_modules())"
    )


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) or hasattr(output, "to_tuple"):
        items = output.to_tuple() if hasattr(output, "to_tuple") else output
        return next((item for item in items if isinstance(item, torch.Tensor)), None)
    return None


class RepresentationCapture:
    """Keeps the output of one student module from the current training forward (a forward hook)."""

    def __init__(self, model: nn.Module, layer: str) -> None:
        self.layer = layer
        self.output: torch.Tensor | None = None
        self.active = False
        module = dict(model.named_modules())[layer]
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if self.active:
            self.output = _first_tensor(output)

    def take(self) -> torch.Tensor:
        output, self.output = self.output, None
        if output is None or not output.requires_grad:
            raise ValueError(
                f"representation_layer={self.layer!r} produced no tensor that requires grad in the training "
                "forward; choose a trainable layer that every loss depends on"
            )
        return output

    def remove(self) -> None:
        self._handle.remove()


def representation_gradients(
    losses: torch.Tensor, representation: torch.Tensor, names: Sequence[str]
) -> torch.Tensor:
    """``(K, numel(Z))`` float32: row ``k`` is ``dL_k/dZ``; the graph is kept for the backward that follows."""
    rows = []
    for loss, name in zip(losses, names):
        (grad,) = torch.autograd.grad(loss, representation, retain_graph=True, allow_unused=True)
        if grad is None:
            raise ValueError(
                f"the {name!r} loss does not depend on the representation layer, so its gradient there is "
                "undefined; choose a layer every loss shares (representation_layer), or "
                "gradient_placement='parameters'"
            )
        rows.append(grad.reshape(-1).float())
    return torch.stack(rows)


def check_shared_coordinates(gradients: torch.Tensor, names: Sequence[str], layer: str) -> None:
    """Refuse a layer where two losses with non-zero gradients touch disjoint coordinates (``G_ij == 0``)."""
    support = gradients != 0
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if support[i].any() and support[j].any() and not (support[i] & support[j]).any():
                raise ValueError(
                    f"at representation_layer={layer!r} the {names[i]!r} and {names[j]!r} losses touch disjoint "
                    "coordinates (separate heads), so their gradient inner product is 0 and conflict is invisible "
                    "(the docs' Gradient placement section explains why); choose the last layer both losses share (e.g. the "
                    "final layer norm)"
                )


def representation_gram(gradients: torch.Tensor, accelerator: Accelerator) -> torch.Tensor:
    """The ``K x K`` Gram of the global micro-batch: ``sum_r G_r / P^2`` over ``P`` processes (float64)."""
    gram = (gradients @ gradients.T).double()
    processes = accelerator.num_processes
    if processes > 1:
        gram = accelerator.reduce(gram, reduction="sum") / processes**2
    return gram
