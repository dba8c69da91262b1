"""The per-step trace behind the interval means: placement, bounded memory, and the trainer's use of it."""

import json
import math

import pytest
import torch

from hf_dtokd import DTOKDTrainer
from hf_dtokd.hub.step_trace import TRACE_NAME, StepTrace
from testing_utils import random_images, tiny_args, tiny_resnet, tiny_vit, train_logs


def test_values_are_spread_evenly_over_the_interval_and_kept_as_they_are():
    trace = StepTrace()
    trace.add("grad_cos", 0, 2, torch.tensor([0.5, -0.2]))  # one value per step
    trace.add("grad_cos", 2, 3, torch.tensor([0.1, float("nan")]))  # two micro-batches in step 3
    positions, values = trace.points["grad_cos"]
    assert positions == [1.0, 2.0, 2.5, 3.0]
    assert values[:3] == pytest.approx([0.5, -0.2, 0.1]) and math.isnan(values[3])


def test_memory_is_bounded_by_dropping_every_other_point_never_by_averaging():
    trace = StepTrace(max_points=4)
    for step in range(1, 21):
        trace.add("weight_distill", step - 1, step, torch.tensor([float(step)]))
    positions, values = trace.points["weight_distill"]
    assert len(values) <= 4
    assert values == positions  # each kept point is one step's own value at its own step
    assert values[0] == 1.0


def test_the_trace_matches_the_logged_interval_figures_and_does_not_depend_on_the_interval(tmp_path):
    """Six dto steps logged every 3 steps and every step: the same per-step cosines and weights, and each
    interval's logged mean cosine, conflict rate and mean weight recomputed from the trace."""
    traces = {}
    for every in (1, 3):
        args = tiny_args(
            tmp_path / str(every), method="dto", max_steps=6, logging_steps=every, learning_rate=0.3
        )
        trainer = DTOKDTrainer(
            model=tiny_vit(), teacher_model=tiny_resnet(), args=args, train_dataset=random_images(32)
        )
        trainer.train()
        traces[every] = trainer.step_trace.to_dict()
        saved = json.loads((tmp_path / str(every) / TRACE_NAME).read_text())
        assert saved == traces[every]
        assert (tmp_path / str(every) / "tradeoff.png").is_file()
        if every == 3:
            cosines = traces[3]["grad_cos"]["value"]
            weights = traces[3]["weight_distill"]["value"]
            assert traces[3]["grad_cos"]["step"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
            for interval, logged in enumerate(train_logs(trainer, "grad_cos")):
                chunk = cosines[3 * interval : 3 * interval + 3]
                assert logged == pytest.approx(sum(chunk) / 3, abs=1e-6)
                rate = train_logs(trainer, "grad_conflict_rate")[interval]
                assert rate == pytest.approx(sum(c < 0 for c in chunk) / 3)
                assert train_logs(trainer, "weight_distill")[interval] == pytest.approx(
                    sum(weights[3 * interval : 3 * interval + 3]) / 3, abs=1e-6
                )
    for key in ("grad_cos", "weight_distill", "weight_task"):
        assert traces[1][key]["step"] == traces[3][key]["step"]
        assert traces[1][key]["value"] == pytest.approx(traces[3][key]["value"], abs=1e-6)
