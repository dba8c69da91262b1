"""The detection demo's run names: what each run reads, so that a recorded run is reused only when it should be."""

from hf_dtokd.demos.shapes import RUN_SETTINGS, DetectionDemoArguments, run_settings


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
