"""Shared test helpers: tiny models and data built from configs (never downloaded), trainer recorders,
reference computations and the two-process launcher."""

from __future__ import annotations

import fnmatch
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features, Sequence, Value
from transformers import (
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    DetrImageProcessor,
    ResNetConfig,
    ResNetForImageClassification,
    TrainerCallback,
    ViTConfig,
    ViTForImageClassification,
)

from hf_dtokd import (
    ClassificationTask,
    DetectionKDTrainer,
    DetectionTransform,
    DTOKDConfig,
    DTOKDTrainer,
    build_detector,
)
from hf_dtokd.data import SHAPE_CLASSES, generate_shapes
from hf_dtokd.losses import (
    logit_kd_loss,
)

NUM_LABELS = 4
IMAGE_SIZE = 16


# one 1-layer, width-16 transformer shape for every ViT-like tiny model (ViT, DeiT), dropout off
TINY_VIT = dict(
    patch_size=4,
    num_channels=3,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def tiny_vit(
    seed: int = 0, num_labels: int = NUM_LABELS, image_size: int = IMAGE_SIZE
) -> ViTForImageClassification:
    torch.manual_seed(seed)
    return ViTForImageClassification(ViTConfig(**TINY_VIT, image_size=image_size, num_labels=num_labels))


def tiny_resnet(seed: int = 1, num_labels: int = NUM_LABELS) -> ResNetForImageClassification:
    torch.manual_seed(seed)
    config = ResNetConfig(
        num_channels=3,
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        num_labels=num_labels,
    )
    return ResNetForImageClassification(config)


def random_images(
    n: int = 16, seed: int = 0, image_size: int = IMAGE_SIZE, num_labels: int = NUM_LABELS
) -> Dataset:
    rng = np.random.default_rng(seed)
    pixels = rng.standard_normal((n, 3, image_size, image_size)).astype(np.float32)
    labels = rng.integers(0, num_labels, n)
    features = Features(
        {
            "pixel_values": Sequence(Sequence(Sequence(Value("float32")))),
            "labels": ClassLabel(num_classes=num_labels),
        }
    )
    return Dataset.from_dict(
        {"pixel_values": pixels.tolist(), "labels": labels.tolist()}, features=features
    ).with_format("torch")


def partly_labelled(dataset: Dataset, labelled: set[int]) -> Dataset:
    """The rows outside ``labelled`` marked unlabelled (label -100: distillation loss only)."""
    dataset = dataset.cast_column("labels", Value("int64"))
    return dataset.map(lambda row, i: {"labels": row["labels"] if i in labelled else -100}, with_indices=True)


def conflicting_pair() -> tuple[ViTForImageClassification, ResNetForImageClassification]:
    """A student/teacher pair whose per-loss log-gradients conflict on ``random_images(16)``.

    Found by search (cos(g_d, g_t) ~ -0.85 at T = 2): exact DTO-KD's pi is then strictly inside
    (0, 1), where the equal-contribution property can be checked.
    """
    student, teacher = tiny_vit(seed=2), tiny_resnet(seed=12)
    with torch.no_grad():
        teacher.classifier[-1].weight.mul_(20.0)
        teacher.classifier[-1].bias.mul_(20.0)
    return student, teacher


def tiny_args(output_dir, **overrides):

    defaults = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=16,
        max_steps=1,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        learning_rate=0.1,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        seed=0,
        data_seed=0,
    )
    defaults.update(overrides)
    return DTOKDConfig(**defaults)


def whole_batch(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    rows = dataset[:]
    return torch.as_tensor(rows["pixel_values"]), torch.as_tensor(rows["labels"])


def train_logs(trainer, key: str) -> list[float]:
    return [
        entry[key] for entry in trainer.state.log_history if key in entry and "train_runtime" not in entry
    ]


def family_students(num_labels: int = NUM_LABELS) -> dict:
    """One tiny student per supported family, all taking 16x16 RGB inputs."""
    from transformers import (
        ConvNextConfig,
        ConvNextForImageClassification,
        DeiTConfig,
        DeiTForImageClassification,
        RegNetConfig,
        RegNetForImageClassification,
        SwinConfig,
        SwinForImageClassification,
        TimmWrapperConfig,
        TimmWrapperForImageClassification,
    )

    return {
        "vit": lambda: tiny_vit(num_labels=num_labels),
        "deit": lambda: DeiTForImageClassification(
            DeiTConfig(**TINY_VIT, image_size=IMAGE_SIZE, num_labels=num_labels)
        ),
        "swin": lambda: SwinForImageClassification(
            SwinConfig(
                image_size=16,
                patch_size=2,
                embed_dim=8,
                depths=[1, 1],
                num_heads=[1, 1],
                window_size=2,
                num_labels=num_labels,
            )
        ),
        "resnet": lambda: tiny_resnet(num_labels=num_labels),
        "convnext": lambda: ConvNextForImageClassification(
            ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=num_labels)
        ),
        "regnet": lambda: RegNetForImageClassification(
            RegNetConfig(
                embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], groups_width=8, num_labels=num_labels
            )
        ),
        "timm_vit": lambda: TimmWrapperForImageClassification(
            TimmWrapperConfig(
                architecture="test_vit", num_labels=num_labels, model_args={"img_size": 16, "patch_size": 4}
            )
        ),
    }


def console_script(name: str) -> str:
    """The installed console script ``name`` of the environment running the tests (its ``bin/`` need not be on
    PATH: ``make test`` runs ``.venv/bin/python`` without activating the environment)."""
    import os
    import sys

    beside = os.path.join(os.path.dirname(sys.executable), name)
    found = beside if os.access(beside, os.X_OK) else shutil.which(name)
    assert found, f"{name} is not installed: pip install -e ."
    return found


def reference_losses(student, teacher, x, y, temperature):
    """(L_distill, L_task) written out from the definitions, independently of hf_dtokd.losses."""
    z_s = student(pixel_values=x).logits
    with torch.no_grad():
        z_t = teacher(pixel_values=x).logits
    p_t = torch.softmax(z_t / temperature, dim=-1)
    log_p_s = torch.log_softmax(z_s / temperature, dim=-1)
    distill = temperature**2 * (p_t * (p_t.log() - log_p_s)).sum(dim=-1).mean()
    task = -torch.log_softmax(z_s, dim=-1)[torch.arange(len(y)), y].mean()
    return distill, task


def flat_grads(loss, params, retain=True):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=retain)])


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


class GradRecorder(TrainerCallback):
    """Keeps a copy of the gradient the Trainer is about to step with."""

    def __init__(self):
        self.grads = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append(torch.cat([p.grad.detach().reshape(-1).clone() for p in model.parameters()]))


def trainer_with(task_class):
    """A ``DTOKDTrainer`` whose task is ``task_class(args)`` (a ``ClassificationTask`` subclass)."""

    class WithTask(DTOKDTrainer):
        def __init__(self, model=None, args=None, **kwargs):
            super().__init__(model=model, args=args, task=task_class(args), **kwargs)

    WithTask.__name__ = f"DTOKDTrainer[{task_class.__name__}]"
    return WithTask


class ThreeObjectivesTask(ClassificationTask):
    """Adds logit KD at temperature 1 as a third signal (the multi-signal extension)."""

    objective_names = ("distill", "distill_t1", "task")

    def compute_objective_losses(self, student_logits, teacher_logits, labels):
        two = super().compute_objective_losses(student_logits, teacher_logits, labels)
        return torch.stack([two[0], logit_kd_loss(student_logits, teacher_logits, 1.0), two[1]])


ThreeObjectives = trainer_with(ThreeObjectivesTask)


class RecordingHub:
    """Stands in for transformers' ``hf_api()``: records what would be created and uploaded (the ``hub``
    fixture of conftest.py installs it)."""

    def __init__(self):
        self.repos, self.uploads = [], []

    def create_repo(self, repo_name, **kwargs):
        self.repos.append(repo_name)
        return SimpleNamespace(repo_id=f"someone/{repo_name}")

    def upload_folder(self, repo_id, folder_path, ignore_patterns=(), **kwargs):
        files = []
        for root, _, names in os.walk(folder_path):
            for name in names:
                relative = os.path.relpath(os.path.join(root, name), folder_path)
                parts = Path(relative).parts
                if not any(fnmatch.fnmatch(part, pattern) for part in parts for pattern in ignore_patterns):
                    files.append(relative)
        self.uploads.append({"repo_id": repo_id, "files": sorted(files), "folder": folder_path})
        return SimpleNamespace(commit_url="recorded")


class NaNTeacherAt:
    """The teacher's logits are NaN on the given forward calls (one call per optimizer step here)."""

    def __init__(self, teacher, calls):
        self.count, self.calls = 0, set(calls)
        teacher.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.count += 1
        if self.count in self.calls:
            output.logits = torch.full_like(output.logits, float("nan"))
        return output


class Crash(RuntimeError):
    pass


class CrashAtStep(TrainerCallback):
    """Kills the run abruptly at the start of a step, after the checkpoints before it were written."""

    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Crash(f"killed at step {self.step}")


def dto_weights(a_d, a_t, l_d, l_t):
    """Closed-form pi on the log-gradients and the raw-loss weights (rescale='famo'), written out."""
    u, v = a_d / l_d, a_t / l_t
    g11, g12, g22 = (u @ u).item(), (u @ v).item(), (v @ v).item()
    pi = min(max((g22 - g12) / (g11 + g22 - 2 * g12), 0.0), 1.0)
    w = torch.tensor([pi / l_d, (1 - pi) / l_t])
    return pi, w / w.sum()


HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def end_process_group() -> None:
    """A launched worker's last step: every rank waits for the others, the process group is destroyed, and the
    process exits without the interpreter's teardown. Left alive, gloo's threads can abort one rank at exit;
    even destroyed, a thread still joinable at teardown did once ("terminate called without an active
    exception", 1 of 3 FSDP2 launches), failing a run whose results were written."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def launch_two_processes(script: str, output_dir: Path, *args: str, config_file: Path | None = None) -> None:
    """``accelerate launch --num_processes 2`` of a worker in this folder (gloo on CPU): ``--multi_gpu`` (DDP), or
    the launcher settings of ``config_file`` (an accelerate YAML: FSDP2, DeepSpeed)."""
    launcher = ["--multi_gpu"] if config_file is None else ["--config_file", str(config_file)]
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *launcher,
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(HERE / "distributed" / script),
        str(output_dir),
        *args,
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(HERE), str(HERE / "distributed"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-4000:]


ID2LABEL = dict(enumerate(SHAPE_CLASSES))


SIZE = 32


def tiny_detr(seed: int, queries: int = 6, id2label: dict[int, str] = ID2LABEL) -> torch.nn.Module:
    torch.manual_seed(seed)
    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1] * 4, layer_type="basic")
    return build_detector(
        "detr",
        backbone,
        id2label,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=queries,
        dropout=0.0,
    )


def processor() -> DetrImageProcessor:
    return DetrImageProcessor(size={"height": SIZE, "width": SIZE}, do_pad=False)


def detection_args(tmp_path, **overrides):
    defaults = dict(
        remove_unused_columns=False, per_device_train_batch_size=8, learning_rate=0.05, temperature=2.0
    )
    return tiny_args(tmp_path, **{**defaults, **overrides})


def two_head_deit(layers=2, seed=3):
    torch.manual_seed(seed)
    config = DeiTConfig(
        **{**TINY_VIT, "num_hidden_layers": layers}, image_size=IMAGE_SIZE, num_labels=NUM_LABELS
    )
    return DeiTForImageClassificationWithTeacher(config)


EMPTY = {"id": [], "area": [], "bbox": [], "category": []}


def oracle_detr(queries: int = 8) -> torch.nn.Module:
    """A tiny DETR whose first queries copy each image's true boxes, shifted by 0, 15 or 30 % of the box
    width and with every fourth class wrong: a deterministic mAP strictly between 0 and 1 that depends on
    exactly which images are evaluated (a padded duplicate or a lost image changes it)."""
    model = tiny_detr(0, queries=queries)
    forward = model.forward

    def oracle_forward(pixel_values, labels=None, **kwargs):
        outputs = forward(pixel_values=pixel_values, labels=labels, **kwargs)
        if labels is None:
            return outputs
        logits, boxes = outputs.logits.detach().clone(), outputs.pred_boxes.detach().clone()
        for b, target in enumerate(labels):
            for q, (box, label) in enumerate(zip(target["boxes"], target["class_labels"])):
                index = q + int(1000 * float(box[0])) % 3
                moved = box.clone()
                moved[0] = moved[0] + 0.15 * (index % 3) * moved[2]
                boxes[b, q] = moved
                wrong = (index + int(1000 * float(box[1]))) % 4 == 0
                logits[b, q, (int(label) + 1) % 3 if wrong else int(label)] += 4.0 + 0.1 * q
        outputs.logits, outputs.pred_boxes = logits, boxes
        return outputs

    model.forward = oracle_forward
    return model


def evaluation_set():
    """11 images, one in three without objects: per-image label dicts of different sizes, an uneven split."""
    data = generate_shapes(11, image_size=32, seed=5)
    data = data.map(lambda row, i: {"objects": EMPTY if i % 3 == 2 else row["objects"]}, with_indices=True)
    return data.with_transform(DetectionTransform(processor(), 3))


def evaluate(output_dir: str) -> dict:
    args = detection_args(output_dir, per_device_eval_batch_size=2)
    trainer = DetectionKDTrainer(
        model=oracle_detr(),
        teacher_model=tiny_detr(1),
        args=args,
        eval_dataset=evaluation_set(),
        processing_class=processor(),
    )
    return trainer.evaluate()


EPS = 1e-8


# ---------------------------------------------------------------------------------------------- segmentation
SEGMENTATION_SIZE = 32
SEGMENTATION_ID2LABEL = dict(enumerate(("background", "circle", "square", "triangle")))


def tiny_segformer(seed: int = 0, width: int = 8, id2label: dict[int, str] = SEGMENTATION_ID2LABEL):
    """A 2-stage SegFormer (logits at a quarter of the input size), dropout off."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(seed)
    config = SegformerConfig(
        num_channels=3,
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[width, 2 * width],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=2 * width,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout_prob=0.0,
        drop_path_rate=0.0,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    return SegformerForSemanticSegmentation(config)


def segformer_processor(size: int = SEGMENTATION_SIZE):
    from transformers import SegformerImageProcessor

    return SegformerImageProcessor(size={"height": size, "width": size}, do_reduce_labels=False)


def shape_masks(n: int = 16, size: int = SEGMENTATION_SIZE, seed: int = 3, processor_size: int | None = None):
    """Generated segmentation rows prepared for a SegFormer (``pixel_values``, ``labels``)."""
    from hf_dtokd import SegmentationTransform
    from hf_dtokd.data import generate_shape_masks

    transform = SegmentationTransform(segformer_processor(processor_size or size))
    return generate_shape_masks(n, image_size=max(size, 16), max_objects=2, seed=seed).with_transform(
        transform
    )


def segmentation_args(tmp_path, **overrides):
    from hf_dtokd import SegmentationKDConfig

    settings = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        learning_rate=0.01,
        optim="sgd",
        lr_scheduler_type="constant",
        remove_unused_columns=False,
        seed=0,
        data_seed=0,
        plot_tradeoff=False,
    )
    settings.update(overrides)
    return SegmentationKDConfig(**settings)
