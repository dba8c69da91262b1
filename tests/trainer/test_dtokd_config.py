"""DTOKDConfig: defaults, validation at config time, and the command line through HfArgumentParser."""

import json

import pytest
from transformers import HfArgumentParser

from hf_dtokd import DTOKDConfig


def test_defaults(tmp_path):
    config = DTOKDConfig(output_dir=str(tmp_path))
    assert (config.method, config.rescale, config.gradient_placement) == ("dto", "famo", "parameters")
    assert (config.tradeoff_learning_rate, config.tradeoff_weight_decay) == (0.025, 0.01)
    assert (config.min_loss, config.eps) == (0.0, 1e-8)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"method": "mgda2"},
            "valid values: dto, dto_amortized, fixed, famo, mgda, pcgrad, cagrad, upgrad, imtl_g, "
            "aligned_mtl, dualproj, uncertainty, dot, dot_adamw",
        ),
        ({"method": "fixed", "log_gradients": True}, "log_gradients applies to the gradient methods"),
        ({"method": "fixed", "rescale": "none"}, "rescale='none' applies to log-loss weighting"),
        ({"method": "mgda", "rescale": "none"}, "rescale='none' applies to log-loss weighting"),
        ({"cagrad_c": -0.5}, "cagrad_c"),
        ({"dot_momentum": 1.0}, "dot_momentum"),
        ({"dot_delta": 0.2}, "dot_delta"),
        ({"method": "dot_adamw", "dot_second_moment": "mean"}, "valid values: sum, branches"),
        ({"method": "dot_adamw", "dot_bias_correction": "none"}, "valid values: branches, shared"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"temperature": -1.0}, "temperature must be > 0"),
        ({"alpha": 1.2}, r"alpha must lie in \[0, 1\]"),
        ({"alpha": -0.1}, r"alpha must lie in \[0, 1\]"),
        ({"rescale": "sum"}, "valid values: famo, none"),
        ({"gradient_placement": "everywhere"}, "valid values: parameters, representation"),
        ({"method": "fixed", "gradient_placement": "representation"}, "applies to the Gram methods"),
        ({"method": "dot", "gradient_placement": "representation"}, "applies to the Gram methods"),
        ({"representation_layer": "vit.layernorm"}, "only read with gradient_placement='representation'"),
        ({"method": "fixed", "batched_gradients": True}, "batched_gradients applies to the Gram methods"),
        ({"gradient_placement": "representation", "batched_gradients": True}, "batched_gradients applies"),
        ({"look_ahead": "later"}, "valid values: same_batch, next_batch"),
        ({"method": "dto", "look_ahead": "next_batch"}, "look_ahead='next_batch' applies to dto_amortized"),
        ({"eps": 0.0}, "eps must be > 0"),
        ({"tradeoff_learning_rate": 0.0}, "tradeoff_learning_rate"),
        ({"teacher_model_init_kwargs": "{not json"}, "not valid JSON"),
        ({"teacher_label_indices": [0, -1]}, "teacher_label_indices"),
    ],
)
def test_bad_values_are_refused_at_config_time(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        DTOKDConfig(output_dir=str(tmp_path), **overrides)


@pytest.mark.parametrize("method", ["fixed", "dto", "dto_amortized", "dot", "mgda"])
def test_methods_to_compare_against_do_not_warn(tmp_path, method, recwarn):
    DTOKDConfig(output_dir=str(tmp_path), method=method)
    assert not [w for w in recwarn if "experiment" in str(w.message)]


def test_every_field_is_a_flag_with_help(tmp_path):
    parser = HfArgumentParser((DTOKDConfig,))
    (config,) = parser.parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--method",
            "dto_amortized",
            "--temperature",
            "2",
            "--teacher_model_name_or_path",
            "some/teacher",
            "--teacher_model_init_kwargs",
            '{"revision": "v1"}',
            "--teacher_label_indices",
            "3",
            "1",
        ]
    )
    assert config.method == "dto_amortized" and config.temperature == 2.0
    assert config.teacher_model_init_kwargs == {"revision": "v1"}
    assert config.teacher_label_indices == [3, 1]
    help_text = parser.format_help()
    for name in (
        "teacher_model_name_or_path",
        "temperature",
        "method",
        "alpha",
        "rescale",
        "min_loss",
        "eps",
        "tradeoff_learning_rate",
        "tradeoff_weight_decay",
        "gradient_placement",
    ):
        assert f"--{name}" in help_text
    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--method", "nope"])


def test_json_file_as_single_argument(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"output_dir": str(tmp_path), "method": "fixed", "alpha": 0.7}))
    (config,) = HfArgumentParser((DTOKDConfig,)).parse_json_file(str(path))
    assert config.method == "fixed" and config.alpha == 0.7
