"""Launched by test_sharded.py through ``accelerate launch --config_file <fsdp2 / deepspeed YAML>`` (2 processes).

``sharded_harness.enable()`` first (the CPU adjustment it documents), then each variant trains for a few steps
on 16 examples with a per-process batch half the single-process one (same global batch); a variant the backend
refuses at start records the refusal. The ``RESUMED`` cases train straight, then are killed and resumed from a
sharded checkpoint, saved and pushed (to a recorder). Rank 0 writes the backend, the world size, the logged pi,
every rank's pi, every rank's gathered parameters and the teacher checks to ``sharded_results.json``.
"""

from __future__ import annotations

import json
import sys

import sharded_harness
import torch
from ddp_worker import GA, make_trainer

from hf_dtokd import DTOKDTrainer
from hf_dtokd.gradients.sharded import ShardedWindowGradients
from hf_dtokd.trainer.teacher_cache import TEACHER_LOGITS
from testing_utils import end_process_group, train_logs

#: name -> (config overrides, per-process batch here, batch of the single process it must equal)
VARIANTS = {
    "fixed": ({"method": "fixed"}, 8, 16),
    "dto_amortized": ({"method": "dto_amortized"}, 8, 16),
    "dto_representation": ({"method": "dto", "gradient_placement": "representation"}, 8, 16),
    "dto_amortized_next_batch": ({"method": "dto_amortized", "look_ahead": "next_batch"}, 8, 16),
    "uncertainty": ({"method": "uncertainty"}, 8, 16),
    "fixed_accumulation": ({"method": "fixed", **GA}, 4, 8),
    "dto_amortized_accumulation": ({"method": "dto_amortized", **GA}, 4, 8),
    "dto_representation_accumulation": (
        {"method": "dto", "gradient_placement": "representation", **GA},
        4,
        8,
    ),
    "dto_amortized_next_batch_accumulation": (
        {"method": "dto_amortized", "look_ahead": "next_batch", **GA},
        4,
        8,
    ),
    "dto_amortized_teacher_cache": (
        {"method": "dto_amortized", "teacher_cache": True, "per_device_eval_batch_size": 3},
        8,
        16,
    ),
    "feature_kd_vkd_amortized": ({"method": "dto_amortized", "trainer": "features"}, 8, 16),
}

#: Gram methods at the parameters: FSDP2 keeps a shard of each per-loss gradient and all-reduces the Gram;
#: DeepSpeed refuses them at start
GRAM_VARIANTS = {
    "dto": ({"method": "dto"}, 8, 16),
    "dto_accumulation": ({"method": "dto", **GA}, 4, 8),
    "upgrad": ({"method": "upgrad"}, 8, 16),
    "dto_student_gram_feature_kd": (
        {"method": "dto", "trainer": "features", "gram_parameters": "student"},
        8,
        16,
    ),
    "dto_three_objectives_feature_kd": (
        {"method": "dto", "trainer": "features", "group_features": False, **GA},
        4,
        8,
    ),
}

#: refused at start under every sharded backend
REFUSED = {"ema_refused": ({"method": "fixed", "ema_decay": 0.9}, 8, 16)}

#: resumed at step 2 of 4 from a sharded checkpoint (AdamW: the optimizer state matters), then saved and pushed
RESUMED = {
    "resume_dto_amortized": {"method": "dto_amortized"},
    "resume_dto_representation": {"method": "dto", "gradient_placement": "representation"},
    "resume_dto_amortized_next_batch": {"method": "dto_amortized", "look_ahead": "next_batch"},
}
RESUME_SETTINGS = {
    "max_steps": 4,
    "save_strategy": "steps",
    "save_steps": 2,
    "optim": "adamw_torch",
    "learning_rate": 0.01,
    "weight_decay": 0.1,
}

#: broken runs the checks must catch: the losses the weights are computed from are not averaged over processes;
#: the shards' Gram is not summed over ranks
BROKEN = "dto_amortized_without_loss_reduce"
BROKEN_GRAM = "dto_without_gram_sum_over_ranks"
REDUCE_MEAN = DTOKDTrainer.reduce_mean
SUM_OVER_RANKS = ShardedWindowGradients.sum_over_ranks


def full_parameters(backend: str, model: torch.nn.Module) -> torch.Tensor:
    """Every parameter of ``model`` whole, on every rank: FSDP2's DTensors gathered, ZeRO-3's partitions gathered."""
    params = list(model.parameters())
    if backend == "zero3":
        import deepspeed

        with deepspeed.zero.GatheredParameters(params):
            return torch.cat([p.detach().reshape(-1).clone() for p in params])
    return torch.cat(
        [(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().reshape(-1) for p in params]
    )


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model``'s parameters are sharded over the ranks (FSDP2's DTensors, ZeRO-3's partitions)."""
    return all(hasattr(p, "full_tensor") or hasattr(p, "ds_id") for p in model.parameters())


def run(backend: str, name: str, overrides: dict, batch: int, output_dir: str) -> dict:
    DTOKDTrainer.reduce_mean = (lambda self, tensor: tensor) if name == BROKEN else REDUCE_MEAN
    ShardedWindowGradients.sum_over_ranks = (
        (lambda self, gram: gram) if name == BROKEN_GRAM else SUM_OVER_RANKS
    )
    try:
        trainer = make_trainer(f"{output_dir}/{name}", overrides, batch)
    except ValueError as error:  # refused at start: recorded for the test to read
        return {"refused": str(error)}
    teacher = trainer.teacher
    teacher_before = full_parameters(backend, teacher)
    trainer.train()
    accelerator = trainer.accelerator
    params = full_parameters(backend, trainer.model)
    teacher_after = full_parameters(backend, teacher)
    result = {
        "distributed_type": str(accelerator.distributed_type),
        "world_size": accelerator.num_processes,
        "pi_distill": train_logs(trainer, "pi_distill"),
        "grad_cos": train_logs(trainer, "grad_cos") if trainer.balancer.needs_gradients else [],
        "pi_every_rank": accelerator.gather(trainer.balancer.pi.float()[None]).tolist(),
        "params": accelerator.gather(params[None]).tolist(),
        "student_sharded": is_sharded(trainer.model),
        "teacher_sharded": is_sharded(teacher),
        "teacher_frozen": bool(torch.equal(teacher_before, teacher_after))
        and not any(p.requires_grad for p in teacher.parameters()),
    }
    if trainer.args.teacher_cache:  # every rank holds the whole column, in row order
        column = trainer.train_dataset[:][TEACHER_LOGITS].to(accelerator.device)
        result["teacher_logits_every_rank"] = accelerator.gather(column[None]).tolist()
    return result


def run_resumed(backend: str, name: str, overrides: dict, output_dir: str) -> dict:
    """Straight 4 steps; 2 steps, killed, resumed from checkpoint-2 to 4; the resumed student saved and pushed."""
    import transformers.trainer

    from testing_utils import Crash, CrashAtStep, RecordingHub

    DTOKDTrainer.reduce_mean = REDUCE_MEAN
    settings = {**overrides, **RESUME_SETTINGS}
    straight = make_trainer(f"{output_dir}/{name}_straight", settings, 8)
    straight.train()
    killed = make_trainer(f"{output_dir}/{name}", settings, 8)
    killed.add_callback(CrashAtStep(3))
    try:
        killed.train()
    except Crash:
        pass
    hub = RecordingHub()
    transformers.trainer.hf_api = lambda: hub  # nothing reaches the Hub
    resumed = make_trainer(
        f"{output_dir}/{name}",
        {**settings, "push_to_hub": True, "hub_model_id": name, "hub_strategy": "end"},
        8,
    )
    resumed.train(resume_from_checkpoint=True)
    resumed.save_model(f"{output_dir}/{name}_student")
    resumed.push_to_hub()
    accelerator = resumed.accelerator
    result = {"world_size": accelerator.num_processes, "global_step": resumed.state.global_step}
    for key, trainer in (("straight", straight), ("resumed", resumed)):
        params = full_parameters(backend, trainer.model)
        state = {k: v for k, v in trainer.balancer.state_dict().items() if isinstance(v, torch.Tensor)}
        result[key] = {
            "params": accelerator.gather(params[None]).tolist(),
            "pi_distill": train_logs(trainer, "pi_distill"),
            "balancer": {k: v.double().reshape(-1).tolist() for k, v in state.items()},
        }
    result["student_folder"] = f"{output_dir}/{name}_student"
    result["uploads"] = [upload["files"] for upload in hub.uploads]
    return result


def main(output_dir: str, names: list[str]) -> None:
    backend = sharded_harness.enable()
    cases = {
        **VARIANTS,
        **GRAM_VARIANTS,
        **REFUSED,
        BROKEN: ({"method": "dto_amortized"}, 8, 16),
        BROKEN_GRAM: ({"method": "dto"}, 8, 16),
    }
    results = {"backend": backend}
    for name in names or [*cases, *RESUMED]:
        if name in RESUMED:
            results[name] = run_resumed(backend, name, RESUMED[name], output_dir)
            continue
        overrides, batch, _ = cases[name]
        results[name] = run(backend, name, overrides, batch, output_dir)
    if torch.distributed.get_rank() == 0:
        with open(f"{output_dir}/sharded_results.json", "w") as handle:
            json.dump(results, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
    end_process_group()
