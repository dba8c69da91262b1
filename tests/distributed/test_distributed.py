"""Two real processes (DDP on gloo, CPU) give the same pi and weights as one process with the global batch."""

import json

import pytest
import torch
from ddp_worker import BROKEN, VARIANTS, make_trainer

from hf_dtokd.trainer.teacher_cache import TEACHER_LOGITS
from testing_utils import launch_two_processes, train_logs


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
