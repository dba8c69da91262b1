"""Segmentation distillation on two real processes (DDP on gloo, CPU) equals one process with the global batch,
training and evaluation (mIoU, per-class IoU, pixel accuracy)."""

import json

import ddp_segmentation_worker as worker
import pytest
import torch

from testing_utils import launch_two_processes


def test_two_processes_train_and_evaluate_as_one_process_with_the_global_batch(tmp_path):
    launch_two_processes("ddp_segmentation_worker.py", tmp_path / "ddp", "4")
    single = tmp_path / "single"
    worker.main(str(single), 8)  # the reference: one process, the global batch
    ddp = json.loads((tmp_path / "ddp" / "segmentation_results.json").read_text())
    one = json.loads((single / "segmentation_results.json").read_text())
    for method in ("dto", "dto_amortized", "fixed"):
        assert ddp[method]["world_size"] == 2 and one[method]["world_size"] == 1
        rank0, rank1 = (torch.tensor(p) for p in ddp[method]["params"])
        assert torch.equal(rank0, rank1), f"{method}: replicas diverged"
        reference = torch.tensor(one[method]["params"][0])
        torch.testing.assert_close(rank0, reference, rtol=0, atol=2e-6, msg=method)
        assert ddp[method]["pi"] == pytest.approx(one[method]["pi"], abs=1e-6), method
    assert 0.0 < one["evaluation"]["eval_mean_iou"] < 1.0
    for name, value in one["evaluation"].items():  # counted over the same pixels: equal
        if name.startswith(("eval_mean_iou", "eval_iou", "eval_overall")):
            assert ddp["evaluation"][name] == pytest.approx(value, abs=1e-9, nan_ok=True), name
    # the loss is a mean of per-batch means (the Trainer's): other batches, the same value up to float sums
    assert ddp["evaluation"]["eval_loss"] == pytest.approx(one["evaluation"]["eval_loss"], rel=1e-5)
