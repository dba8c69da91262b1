"""A checkpoint written before the task contract (``tests/fixtures/legacy_checkpoints``, made by
``make_legacy_checkpoints.py`` with the trainer of commit 13da637) resumes with today's trainer and ends where
the uninterrupted run of that trainer ended."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from testing_utils import train_logs

FIXTURES = Path(__file__).parents[1] / "fixtures"
sys.path.insert(0, str(FIXTURES))

from make_legacy_checkpoints import CASES, HERE, trainer  # noqa: E402


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_checkpoint_written_before_the_task_contract_resumes_to_the_same_weights(tmp_path, case):
    checkpoint = tmp_path / "checkpoint-2"
    shutil.copytree(HERE / case, checkpoint)
    resumed = trainer(case, tmp_path)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    expected = torch.load(checkpoint / "expected_final_weights.pt")
    for name, parameter in resumed.model.named_parameters():
        torch.testing.assert_close(parameter.detach(), expected[name], rtol=0, atol=1e-6, msg=name)
    logged = json.loads((checkpoint / "expected_logs.json").read_text())["pi_distill"]
    assert train_logs(resumed, "pi_distill") == pytest.approx(logged, abs=1e-6)  # the log history carries on
