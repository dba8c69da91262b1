"""DTOKDConfig: TrainingArguments plus the teacher, the distillation signal and the trade-off method."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from hf_dtokd.balancing import (
    DOT_BIAS_CORRECTIONS,
    DOT_SECOND_MOMENTS,
    GRAMIAN_METHODS,
    LOOK_AHEAD_METHODS,
    METHOD_REGISTRY,
    METHODS,
    RESCALE_RULES,
    build_balancer,
    method_class,
    readers_of,
)
from hf_dtokd.runtime.precision import FP8_BACKENDS, check_fp8_backend

GRADIENT_PLACEMENTS: tuple[str, ...] = ("parameters", "representation")
GRAM_PARAMETERS: tuple[str, ...] = ("all", "student", "shared")
ONE_LOSS_RULES: tuple[str, ...] = ("weighted", "own")
LOOK_AHEADS: tuple[str, ...] = ("same_batch", "next_batch")
NONFINITE_POLICIES: tuple[str, ...] = ("continue", "skip_step", "stop")


#: fields read by the gradient-placement family or by every weighting, checked by the rules above, not per method
SHARED_FIELDS = {
    "temperature",
    "alpha",
    "gradient_placement",
    "gram_parameters",
    "one_loss_parameters",
    "rescale",
    "log_gradients",
    "min_loss",
    "eps",
}
#: fields only some methods read (each method's ``config_fields``): refused with the others when set
METHOD_ONLY_FIELDS = tuple(
    sorted({name for method in METHOD_REGISTRY.values() for name in method.config_fields} - SHARED_FIELDS)
)


@dataclass
class DTOKDConfig(TrainingArguments):
    r"""Configuration of [`DTOKDTrainer`]: every field of `TrainingArguments` plus the ones below.

    Every field has help text, so `HfArgumentParser((DTOKDConfig,))` turns them into command-line
    flags. Defaults that differ from `TrainingArguments`: `logging_steps=10`, `report_to="none"`.

    The trade-off `method` (each one module in `hf_dtokd.balancing`, its formula in the docstring):

    * `"dto"` (default): exact DTO-KD, the min-norm `pi` (closed form for two objectives) from the
      per-loss log-gradients, taken at `gradient_placement`: all trainable student parameters (default), or a
      representation both losses share (`representation_layer`, MGDA-UB style, one backward);
    * `"dto_amortized"` / `"famo"`: DTO-KD's amortized form, which is FAMO (one implementation for
      any number of objectives), one backward per micro-batch plus one no-grad student forward per
      optimizer step;
    * `"fixed"`: Hinton KD, `alpha * L_distill + (1 - alpha) * L_task`;
    * `"mgda"`, `"pcgrad"`, `"cagrad"`, `"upgrad"`, `"imtl_g"`, `"aligned_mtl"`, `"dualproj"`: torchjd's
      Gramian weightings on the per-loss gradients (raw by default, log-gradients with
      `log_gradients=True`);
    * `"uncertainty"`: Kendall et al.'s learned log-variances;
    * `"dot"`: DOT's two momenta (the reference SGD rule; replaces `optim`), `"dot_adamw"`: our AdamW
      form of DOT (two first moments, one second moment), an experiment: at the default gap it loses
      39 pp to fixed alpha in the paper-regime benchmark (docs: comparing the methods).
    """

    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Hub id (e.g. 'microsoft/resnet-50', 'timm/resnet18.a1_in1k') or local folder of the teacher. "
            "Used when the trainer is not given a teacher model instance."
        },
    )
    teacher_model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments for the teacher's from_pretrained, as a dict or a JSON string "
            '(e.g. \'{"revision": "main", "dtype": "bfloat16"}\').'
        },
    )
    teacher_label_indices: list[int] | None = field(
        default=None,
        metadata={
            "help": "When teacher and student label spaces differ: for each student class i, the teacher's class "
            "index whose logit stands for it (length = student num_labels)."
        },
    )
    teacher_cache: bool = field(
        default=False,
        metadata={
            "help": "Run the teacher over train_dataset once (split over processes) and read its logits from a "
            "'teacher_logits' column at every step instead of running it. For datasets without random "
            "augmentation: an on-the-fly transform is refused. Logit distillation only."
        },
    )
    temperature: float = field(
        default=4.0, metadata={"help": "Distillation temperature T > 0 of the logit KL (scaled by T^2)."}
    )
    method: str = field(
        default="dto",
        metadata={
            "help": "Trade-off between the task and distillation losses.",
            "choices": list(METHODS),
        },
    )
    alpha: float = field(
        default=0.5,
        metadata={
            "help": "Distillation weight in [0, 1] for method='fixed' and the DOT methods (task weight is 1 - alpha)."
        },
    )
    method_options: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Further keyword arguments of the method's balancer, as a dict or a JSON string (for a method's "
            "options that have no field of their own)."
        },
    )
    log_gradients: bool | None = field(
        default=None,
        metadata={
            "help": "Gradient methods: weigh the Gram of the log-gradients grad L / L (True) or of the raw "
            "gradients (False). Default: True for 'dto', False for the torchjd weightings (their published form)."
        },
    )
    cagrad_c: float = field(default=0.4, metadata={"help": "CAGrad's radius c >= 0 (method='cagrad')."})
    dot_momentum: float = field(
        default=0.9,
        metadata={"help": "DOT's base momentum mu in [0, 1) (method='dot'); beta1 of method='dot_adamw'."},
    )
    dot_delta: float = field(
        default=0.075,
        metadata={
            "help": "DOT's momentum gap Delta: task momentum mu - Delta, distillation momentum mu + Delta "
            "(0.075; the paper uses 0.09 on ImageNet)."
        },
    )
    dot_second_moment: str = field(
        default="sum",
        metadata={
            "help": "method='dot_adamw' only, an experiment: the second moment of the summed gradient ('sum', "
            "AdamW's) or of each branch's gradient ('branches': g_t^2 + g_d^2, so gradients that cancel do not "
            "shrink the denominator).",
            "choices": list(DOT_SECOND_MOMENTS),
        },
    )
    dot_bias_correction: str = field(
        default="branches",
        metadata={
            "help": "method='dot_adamw' only, an experiment: divide each first moment by its own beta's bias "
            "correction ('branches': 1 - (beta1 -/+ Delta)^k) or both by AdamW's 1 - beta1^k ('shared', which "
            "counts the short task memory more than the long distillation memory in the first steps).",
            "choices": list(DOT_BIAS_CORRECTIONS),
        },
    )
    gradient_placement: str = field(
        default="parameters",
        metadata={
            "help": "Where the Gram methods (dto and the torchjd weightings) take the per-loss gradients: "
            "'parameters' = all trainable student parameters (exact; two backward passes per micro-batch); "
            "'representation' = the output of representation_layer, a layer every loss shares (MGDA-UB: pi from "
            "the Gram of dL_i/dZ, then one backward of the balanced loss; pi is set per micro-batch).",
            "choices": list(GRADIENT_PLACEMENTS),
        },
    )
    representation_layer: str = field(
        default="auto",
        metadata={
            "help": "gradient_placement='representation': the student layer whose output Z is shared by every "
            "loss. 'auto' = the logits for logit KD (any family), else the family's last shared layer "
            "(e.g. 'vit.layernorm'); 'logits'; or a module name of the student (model.named_modules())."
        },
    )
    batched_gradients: bool = field(
        default=False,
        metadata={
            "help": "gradient_placement='parameters' with three or more objectives: take the per-loss gradients of "
            "all but the task loss in one batched VJP (autograd.grad with is_grads_batched) instead of one call "
            "each; falls back to separate calls when an operation has no batching rule. Off by default: slower "
            "on CPU in benchmarks/step_cost.py."
        },
    )
    gram_parameters: str = field(
        default="all",
        metadata={
            "help": "gradient_placement='parameters': which trainable parameters the per-loss Gram (and so pi and "
            "the logged cosines) is computed over. 'all' = every trainable parameter, projectors included; "
            "'student' = the student's own parameters (projectors and other training-only modules left out of "
            "the Gram; they still receive their weighted gradient). Same thing when there are no projectors. "
            "'shared' = the parameters every objective reaches (read off the autograd graph each micro-batch): "
            "heads, projectors and query selection that one loss alone trains are left out, as MGDA's reference "
            "code takes the Gram over the shared encoder only.",
            "choices": list(GRAM_PARAMETERS),
        },
    )
    one_loss_parameters: str = field(
        default="weighted",
        metadata={
            "help": "Gram methods with gradient_placement='parameters': the update of a parameter that one "
            "objective alone reaches (a task-only head, a distillation-only projector). 'weighted' = that "
            "objective's gradient times its applied weight, like every other parameter (MGDA's reference code "
            "scales each head's loss by its task weight); 'own' = that objective's raw gradient at full weight 1 "
            "(MGDA's Algorithm 2: task-specific parameters follow their own loss). Parameters reached by several "
            "objectives but not all keep the weighted sum.",
            "choices": list(ONE_LOSS_RULES),
        },
    )
    ema_decay: float = field(
        default=0.0,
        metadata={
            "help": "Keep an exponential moving average of the student's weights with this decay (timm's "
            "ModelEmaV3; 0 = off; DeiT and RT-DETR train with 0.9999 over long runs): it is what evaluate() "
            "scores during training, it is saved with checkpoints, and it replaces the student's weights at the "
            "end of training (the saved and pushed model)."
        },
    )
    ema_warmup: bool = field(
        default=False,
        metadata={"help": "With ema_decay: ramp the decay up as 1 - (1 + step)^(-2/3), capped at ema_decay."},
    )
    look_ahead: str = field(
        default="same_batch",
        metadata={
            "help": "dto_amortized / famo: where the losses after the optimizer step come from. 'same_batch' "
            "re-forwards the window (no grad; the published rule); 'next_batch' uses the next window's losses, "
            "which are computed anyway (no extra forward, noisier: a different batch).",
            "choices": list(LOOK_AHEADS),
        },
    )
    rescale: str = field(
        default="famo",
        metadata={
            "help": "Scale of the balanced gradient: 'famo' divides by c = sum_i pi_i / L_i so the raw-loss weights "
            "sum to 1 (learning rates and max_grad_norm keep their meaning); 'none' is the paper's literal g*.",
            "choices": list(RESCALE_RULES),
        },
    )
    min_loss: float = field(
        default=0.0,
        metadata={
            "help": "Lower bound subtracted before the log: log(L - min_loss + eps). Set it for negative losses."
        },
    )
    eps: float = field(
        default=1e-8, metadata={"help": "eps > 0 in log(L - min_loss + eps); keeps a zero loss finite."}
    )
    on_nonfinite_loss: str = field(
        default="continue",
        metadata={
            "help": "When a window's losses are NaN/inf (pi is always kept and the event counted): 'continue' "
            "applies the step as the Trainer would (its gradient is then non-finite too; the final log, the model "
            "card and push_to_hub then say so or refuse), 'skip_step' takes no optimizer or scheduler step for that "
            "window (weights and optimizer state untouched), 'stop' raises NonFiniteLossError before the step "
            "(train() fails, nothing is saved as finished).",
            "choices": ["continue", "skip_step", "stop"],
        },
    )
    tradeoff_learning_rate: float = field(
        default=0.025,
        metadata={
            "help": "Adam learning rate of the trade-off parameters: the logits of dto_amortized / famo, the "
            "log-variances of uncertainty."
        },
    )
    tradeoff_weight_decay: float = field(
        default=0.01,
        metadata={
            "help": "Adam weight decay of the trade-off parameters (dto_amortized / famo logits, uncertainty "
            "log-variances)."
        },
    )
    fp8_backend: str | None = field(
        default=None,
        metadata={
            "help": "Train the student in fp8 through accelerate: 'ao' (torchao) or 'te' (TransformerEngine). Sets "
            "mixed_precision='fp8' with the backend's recipe; do not also pass --bf16 (it would turn fp8 off). "
            "Needs a GPU of compute capability >= 8.9 unless fp8_emulate.",
            "choices": list(FP8_BACKENDS),
        },
    )
    fp8_emulate: bool = field(
        default=False,
        metadata={
            "help": "fp8_backend='ao': emulate the fp8 matmuls in higher precision (torchao's emulate). Runs on any "
            "device, with no speed-up: for tests and debugging."
        },
    )
    plot_tradeoff: bool = field(
        default=True,
        metadata={
            "help": "Write <output_dir>/tradeoff.png (pi, applied weights, per-step gradient cosines and conflict, "
            "dominance, losses) and tradeoff_steps.json (the per-step values) at every save and at the end of "
            "training; the model card shows the plot."
        },
    )
    logging_steps: float = field(
        default=10,
        metadata={
            "help": "Log every X updates steps (an integer, or a float in (0, 1) for a ratio of total steps)."
        },
    )
    report_to: None | str | list[str] = field(
        default="none",
        metadata={"help": "Integrations to report results and logs to ('none', 'tensorboard', ...)."},
    )

    def __post_init__(self) -> None:
        if isinstance(self.teacher_model_init_kwargs, str):
            try:
                self.teacher_model_init_kwargs = json.loads(self.teacher_model_init_kwargs)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f'teacher_model_init_kwargs is not valid JSON ({error}); pass e.g. \'{{"revision": "main"}}\''
                ) from error
        if isinstance(self.method_options, str):
            try:
                self.method_options = json.loads(self.method_options)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"method_options is not valid JSON ({error}); pass e.g. '{{\"scale\": 2.0}}'"
                ) from error
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; valid values: {', '.join(METHODS)}")
        if self.rescale not in RESCALE_RULES:
            raise ValueError(
                f"unknown rescale rule {self.rescale!r}; valid values: {', '.join(RESCALE_RULES)}"
            )
        self._check_method_options()
        if experiment := method_class(self.method).experiment:
            warnings.warn(experiment, UserWarning, stacklevel=3)
        if self.gradient_placement not in GRADIENT_PLACEMENTS:
            raise ValueError(
                f"unknown gradient_placement {self.gradient_placement!r}; valid values: {', '.join(GRADIENT_PLACEMENTS)}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(
                f"ema_decay must lie in [0, 1) (0 = no moving average; e.g. 0.999), got {self.ema_decay}"
            )
        if self.ema_warmup and self.ema_decay == 0.0:
            raise ValueError("ema_warmup=True needs a moving average: set ema_decay (e.g. 0.999), or drop it")
        if self.one_loss_parameters not in ONE_LOSS_RULES:
            raise ValueError(
                f"unknown one_loss_parameters {self.one_loss_parameters!r}; valid values: {', '.join(ONE_LOSS_RULES)}"
            )
        if self.gram_parameters not in GRAM_PARAMETERS:
            raise ValueError(
                f"unknown gram_parameters {self.gram_parameters!r}; valid values: {', '.join(GRAM_PARAMETERS)}"
            )
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(
                f"alpha must lie in [0, 1] (the distillation weight of method='fixed'), got {self.alpha}"
            )
        if self.on_nonfinite_loss not in NONFINITE_POLICIES:
            raise ValueError(
                f"unknown on_nonfinite_loss {self.on_nonfinite_loss!r}; valid values: {', '.join(NONFINITE_POLICIES)}"
            )
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0 (it keeps log(L - min_loss + eps) finite), got {self.eps}")
        self._check_precision()
        if self.teacher_label_indices is not None and any(i < 0 for i in self.teacher_label_indices):
            raise ValueError(
                f"teacher_label_indices must be class indices >= 0, got {self.teacher_label_indices}"
            )
        self.check_signal_options()
        super().__post_init__()

    def check_signal_options(self) -> None:
        """A signal's config (``signals/signal_config.py``) checks its own options here (plain KD has none)."""
        return None

    def _check_precision(self) -> None:
        if self.fp8_backend is not None:
            check_fp8_backend(self.fp8_backend, self.fp8_emulate)
            if self.bf16 or self.fp16:
                raise ValueError(
                    f"fp8_backend={self.fp8_backend!r} with {'bf16' if self.bf16 else 'fp16'}=True: the Trainer would "
                    "set mixed_precision to that and turn fp8 off. Drop the flag; fp8 already runs the layers it does "
                    "not convert in bf16 autocast"
                )
        elif self.fp8_emulate:
            raise ValueError(
                "fp8_emulate applies to fp8_backend='ao'; set fp8_backend too, or leave it False"
            )
        launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        if launcher == "fp8" and (self.bf16 or self.fp16):
            raise ValueError(
                "accelerate was launched with mixed_precision fp8 but bf16/fp16=True makes the Trainer turn it off; "
                "drop --bf16 / --fp16 (or use fp8_backend instead of the launcher flag)"
            )

    def _check_method_options(self) -> None:
        """Options that only some methods read: refuse them elsewhere rather than ignore them."""
        if self.log_gradients is not None and self.method not in GRAMIAN_METHODS:
            raise ValueError(
                f"log_gradients applies to the gradient methods ({', '.join(GRAMIAN_METHODS)}), not to "
                f"method={self.method!r}; leave it unset"
            )
        chosen = method_class(self.method)
        log_gradients = (
            self.log_gradients
            if self.log_gradients is not None
            else getattr(chosen, "log_gradients_by_default", False)
        )
        uses_rescale = "rescale" in chosen.config_fields and (
            self.method not in GRAMIAN_METHODS or log_gradients
        )
        if self.rescale != "famo" and not uses_rescale:
            raise ValueError(
                f"rescale={self.rescale!r} applies to log-loss weighting (dto, dto_amortized, famo, or a gradient "
                f"method with log_gradients=True), not to method={self.method!r}; leave it at 'famo'"
            )
        if self.gradient_placement == "representation" and self.method not in GRAMIAN_METHODS:
            raise ValueError(
                f"gradient_placement='representation' applies to the Gram methods ({', '.join(GRAMIAN_METHODS)}), "
                f"not to method={self.method!r}; leave it at 'parameters'"
            )
        if self.representation_layer != "auto" and self.gradient_placement != "representation":
            raise ValueError(
                f"representation_layer={self.representation_layer!r} is only read with "
                "gradient_placement='representation'; set that too, or leave representation_layer at 'auto'"
            )
        if self.batched_gradients and (
            self.method not in GRAMIAN_METHODS or self.gradient_placement != "parameters"
        ):
            raise ValueError(
                "batched_gradients applies to the Gram methods with gradient_placement='parameters', not to "
                f"method={self.method!r} with gradient_placement={self.gradient_placement!r}; leave it False"
            )
        if self.gram_parameters != "all" and (
            self.method not in GRAMIAN_METHODS or self.gradient_placement != "parameters"
        ):
            raise ValueError(
                f"gram_parameters={self.gram_parameters!r} applies to the Gram methods with "
                f"gradient_placement='parameters', not to method={self.method!r} with "
                f"gradient_placement={self.gradient_placement!r}; leave it at 'all'"
            )
        if self.one_loss_parameters != "weighted" and (
            self.method not in GRAMIAN_METHODS or self.gradient_placement != "parameters"
        ):
            raise ValueError(
                f"one_loss_parameters={self.one_loss_parameters!r} applies to the Gram methods with "
                f"gradient_placement='parameters', not to method={self.method!r} with "
                f"gradient_placement={self.gradient_placement!r}; leave it at 'weighted'"
            )
        if self.look_ahead not in LOOK_AHEADS:
            raise ValueError(
                f"unknown look_ahead {self.look_ahead!r}; valid values: {', '.join(LOOK_AHEADS)}"
            )
        if self.look_ahead != "same_batch" and self.method not in LOOK_AHEAD_METHODS:
            raise ValueError(
                f"look_ahead={self.look_ahead!r} applies to {' / '.join(LOOK_AHEAD_METHODS)}, not to "
                f"method={self.method!r}; leave it at 'same_batch'"
            )
        # a method's own fields (declared on its balancer class) are refused with another method when set
        for name in METHOD_ONLY_FIELDS:
            value, default = getattr(self, name), self.__dataclass_fields__[name].default
            if value != default and name not in chosen.config_fields:
                raise ValueError(
                    f"{name}={value!r} applies to {', '.join(readers_of(name))}, not to method={self.method!r}; "
                    f"leave it at {default!r}"
                )
        build_balancer(self, 2)  # its values, checked once: by the method's own constructor
