"""Two real processes (DDP on gloo, CPU) give the same pi and weights as one process with the global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddp_worker import BROKEN, VARIANTS, make_trainer
from hf_dtokd.trainer.teacher_cache import TEACHER_LOGITS
from tiny import train_logs

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_processes(script: str, output_dir: Path) -> None:
    """``accelerate launch --multi_gpu --num_processes 2`` of a worker in this folder (gloo on CPU)."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), str(HERE / script), str(output_dir),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("ddp")
    launch_two_processes("ddp_worker.py", output_dir)
    return json.loads((output_dir / "ddp_results.json").read_text())


@pytest.mark.parametrize("variant", VARIANTS)
def test_two_processes_equal_one_process_with_the_global_batch(ddp_results, tmp_path, variant):
    result = ddp_results[variant]
    assert result["world_size"] == 2, "accelerate ran one process: the launch did not give DDP"
    rank0, rank1 = (torch.tensor(p) for p in result["params"])
    assert torch.allclose(rank0, rank1, atol=1e-7), "replicas diverged"
    pi0, pi1 = (torch.tensor(p) for p in result["pi_every_rank"])
    assert torch.equal(pi0, pi1), "the ranks hold different pi"

    overrides, _, single_batch = VARIANTS[variant]
    single = make_trainer(str(tmp_path), overrides, single_batch)
    single.train()
    single_params = torch.cat([p.detach().reshape(-1) for p in single.model.parameters()])
    assert result["pi_distill"] == pytest.approx(train_logs(single, "pi_distill"), abs=1e-5)
    assert torch.allclose(rank0, single_params, atol=1e-5)
    if "teacher_logits_every_rank" in result:  # every rank holds the whole column, in row order
        expected = single.train_dataset[:][TEACHER_LOGITS]
        for column in result["teacher_logits_every_rank"]:
            assert torch.allclose(torch.tensor(column), expected, atol=1e-6)


def test_the_cross_rank_checks_catch_ranks_that_skip_the_all_reduce(ddp_results):
    result = ddp_results[BROKEN]
    assert result["world_size"] == 2
    pi0, pi1 = (torch.tensor(p) for p in result["pi_every_rank"])
    rank0, rank1 = (torch.tensor(p) for p in result["params"])
    assert not torch.equal(pi0, pi1) and not torch.allclose(rank0, rank1, atol=1e-7)
