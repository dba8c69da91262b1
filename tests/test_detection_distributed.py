"""Detection distillation on two real processes (DDP on gloo, CPU), one rank seeing only images without targets."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

from test_distributed import free_port

HERE = Path(__file__).parent


def test_ranks_stay_identical_when_one_rank_has_no_targets(tmp_path):
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), str(HERE / "ddp_detection_worker.py"), str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    results = json.loads((tmp_path / "ddp_detection_results.json").read_text())
    assert set(results) == {"dto", "dto_amortized", "dto_token_kd"}
    for method, result in results.items():
        assert result["world_size"] == 2, method
        rank0, rank1 = (torch.tensor(p) for p in result["params"])
        assert torch.allclose(rank0, rank1, atol=1e-7), f"{method}: replicas diverged"
        pi0, pi1 = (torch.tensor(p) for p in result["pi_every_rank"])
        assert torch.equal(pi0, pi1), f"{method}: the ranks hold different pi"
        assert len(result["task_loss"]) == 2 and all(math.isfinite(v) for v in result["task_loss"])
