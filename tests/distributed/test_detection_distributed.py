"""Detection distillation on two real processes (DDP on gloo, CPU), one rank seeing only images without targets."""

import json
import math

import pytest
import torch

from testing_utils import evaluate, launch_two_processes


def test_ranks_stay_identical_when_one_rank_has_no_targets(tmp_path):
    launch_two_processes("ddp_detection_worker.py", tmp_path)
    results = json.loads((tmp_path / "ddp_detection_results.json").read_text())
    assert set(results) == {"dto", "dto_amortized", "dto_token_kd", "dto_unlabelled", "evaluation"}
    drawn = results["dto_unlabelled"].pop("drawn")
    assert len(drawn) == 2 and not set(drawn[0]) & set(drawn[1]), (
        "the ranks must draw different unlabelled images"
    )
    # evaluation: per-image label dicts of different sizes gathered from both ranks (11 images, 2 per batch:
    # the sampler pads rank 1 with a duplicate that must be dropped) give the one-process mAP
    evaluation, single = results.pop("evaluation"), evaluate(str(tmp_path / "single"))
    assert 0.05 < single["eval_map"] < 0.95
    for name, value in single.items():
        if name.startswith("eval_ma"):
            assert evaluation[name] == pytest.approx(value, abs=1e-9), name
    for method, result in results.items():
        assert result["world_size"] == 2, method
        rank0, rank1 = (torch.tensor(p) for p in result["params"])
        assert torch.allclose(rank0, rank1, atol=1e-7), f"{method}: replicas diverged"
        pi0, pi1 = (torch.tensor(p) for p in result["pi_every_rank"])
        assert torch.equal(pi0, pi1), f"{method}: the ranks hold different pi"
        assert len(result["task_loss"]) == 2 and all(math.isfinite(v) for v in result["task_loss"])
