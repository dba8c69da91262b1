"""The detection demo's run names: what each run reads, so that a recorded run is reused only when it should be."""

import pytest

from hf_dtokd.demos.shapes import (
    RUN_SETTINGS,
    DetectionDemoArguments,
    finished_run,
    format_table,
    model_weights,
    record_run,
    run_settings,
    summarise,
    weights_fingerprint,
)


def test_alpha_zero_runs_differ_only_in_the_unlabelled_images():
    demo = DetectionDemoArguments(token_projector="vkd")
    no_kd, control = run_settings(demo, "no_kd"), run_settings(demo, "no_kd_unlabelled")
    assert RUN_SETTINGS["no_kd"] == RUN_SETTINGS["no_kd_unlabelled"] == ("fixed", 0.0, {})
    # the control reads the unlabelled images (its second forward is what it measures), no KD does not
    assert {"unlabelled_size", "unlabelled_batch_size"} <= set(control) - set(no_kd)
    assert set(control) - set(no_kd) == {"unlabelled_size", "unlabelled_batch_size"}
    # neither builds a token projector: with alpha 0 there is no distillation term to add it to
    assert "token_projector" not in no_kd and "token_projector" not in control
    assert run_settings(demo, "fixed")["token_projector"] == "vkd"


def test_without_unlabelled_images_the_control_is_no_kd():
    demo = DetectionDemoArguments(unlabelled_size=0)
    assert run_settings(demo, "no_kd_unlabelled") == run_settings(demo, "no_kd")
    assert "unlabelled_batch_size" not in run_settings(demo, "fixed")


def test_a_run_is_reused_only_against_the_weights_it_was_trained_against(tmp_path):
    demo = DetectionDemoArguments(runs_dir=str(tmp_path / "runs"))
    first = {"teacher_weights": "aaaa", "backbone_weights": "bbbb"}
    for run in ("no_kd", "fixed"):
        record_run(demo, {"run": run, "seed": 0, "map": 0.5}, first)
        assert finished_run(demo, run, 0, first) == {"run": run, "seed": 0, "map": 0.5}
    other_teacher = {**first, "teacher_weights": "cccc"}
    assert finished_run(demo, "fixed", 0, other_teacher) is None  # trained again: another teacher
    assert finished_run(demo, "no_kd", 0, other_teacher) is not None  # no KD never reads the teacher
    other_backbone = {**first, "backbone_weights": "dddd"}
    assert finished_run(demo, "no_kd", 0, other_backbone) is None  # every student starts from the backbone
    assert finished_run(demo, "fixed", 0) is None  # a run recorded with fingerprints needs them


def test_the_fingerprint_reads_the_saved_weights(tmp_path):
    for name, content in (("teacher", b"one"), ("student_backbone", b"two")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(content)
    demo = DetectionDemoArguments(models_dir=str(tmp_path))
    # SHA-256 of b"one" and b"two", computed outside this project (coreutils sha256sum)
    assert weights_fingerprint(tmp_path / "teacher") == "7692c3ad3540bb80"
    assert model_weights(demo, str(tmp_path / "teacher")) == {
        "teacher_weights": "7692c3ad3540bb80",
        "backbone_weights": "3fc4ccfe745870e2",
    }
    random_backbone = DetectionDemoArguments(models_dir=str(tmp_path), student_backbone="random")
    assert model_weights(random_backbone, str(tmp_path / "teacher")) == {
        "teacher_weights": "7692c3ad3540bb80"
    }


def test_row_seeds_give_named_runs_their_own_seed_count():
    demo = DetectionDemoArguments(
        runs=["no_kd", "fixed", "fixed_0.1"], seed=2, seeds=4, row_seeds=["fixed_0.1=2"]
    )
    assert demo.seeds_of_run() == {"no_kd": range(2, 6), "fixed": range(2, 6), "fixed_0.1": range(2, 4)}
    assert "row_seeds" not in run_settings(demo, "fixed")  # which seeds run does not change a run's result


@pytest.mark.parametrize(
    ("row_seeds", "message"),
    [
        (["fixed_0.1"], "RUN=N"),
        (["fixed_0.1=0"], "RUN=N"),
        (["fixed_0.1=two"], "RUN=N"),
        (["dto=3"], "not in runs"),
        (["fixed=3", "fixed=4"], "twice"),
    ],
)
def test_row_seeds_are_validated(row_seeds, message):
    with pytest.raises(ValueError, match=message):
        DetectionDemoArguments(runs=["no_kd", "fixed", "fixed_0.1"], row_seeds=row_seeds)


def _result(run: str, seed: int, value: float) -> dict:
    return {
        "run": run,
        "seed": seed,
        "method": "fixed",
        "map": value,
        "map_50": value,
        "map_75": value,
        "wall_seconds": 1.0,
        "mean_pi_distill": None,
        "step_trace": {},
    }


def test_a_row_with_fewer_seeds_is_paired_over_the_seeds_it_shares():
    maps = {"no_kd": [0.30, 0.34, 0.31, 0.35], "fixed": [0.36, 0.37, 0.38, 0.42], "fixed_0.1": [0.33, 0.38]}
    results = [_result(run, seed, v) for run, values in maps.items() for seed, v in enumerate(values)]
    rows = {r["run"]: r for r in summarise(results, teacher_map=0.5)}
    # fixed_0.1 against no KD on seeds 0-1 only: differences 0.03 and 0.04, mean 0.035, SE |0.04-0.03| / 2
    assert rows["fixed_0.1"]["diff_to_no_kd"] == pytest.approx(0.035)
    assert rows["fixed_0.1"]["diff_to_no_kd_se"] == pytest.approx(0.005)
    teacher = {"map": 0.5, "map_50": 0.6, "map_75": 0.5, "wall_seconds": 1.0}
    table = format_table(teacher, list(rows.values()), DetectionDemoArguments())
    assert "over each row's seeds (n)" in table
    assert "35.5 +- 3.5 (n = 2)" in table and "(n = 4)" in table
    uniform = format_table(teacher, [rows["no_kd"], rows["fixed"]], DetectionDemoArguments())
    assert "over 4 seeds" in uniform and "(n = " not in uniform
