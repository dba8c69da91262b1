"""The registry: every method name builds its balancer with the config's hyper-parameters, and what cannot
be built is named."""

import pytest

from hf_dtokd import DTOKDConfig
from hf_dtokd.balancing import DOT, FAMO, METHODS, DTOExact, FixedWeights, UPGrad, build_balancer


@pytest.mark.parametrize("method", METHODS)
def test_every_method_name_builds_a_balancer_for_two_objectives(tmp_path, method):
    if method == "cagrad":
        pytest.importorskip("cvxpy")
    balancer = build_balancer(DTOKDConfig(output_dir=str(tmp_path), method=method), 2)
    assert balancer.num_objectives == 2 and float(balancer.pi.sum()) == pytest.approx(1.0)


def test_the_config_hyper_parameters_reach_the_balancer(tmp_path):
    def config(**kwargs):
        return DTOKDConfig(output_dir=str(tmp_path), **kwargs)

    fixed = build_balancer(config(method="fixed", alpha=0.3))
    assert isinstance(fixed, FixedWeights) and fixed.pi.tolist() == pytest.approx([0.3, 0.7])
    famo = build_balancer(
        config(method="dto_amortized", tradeoff_learning_rate=0.1, tradeoff_weight_decay=0.2)
    )
    group = famo._optimizer.param_groups[0]
    assert isinstance(famo, FAMO) and (group["lr"], group["weight_decay"]) == (0.1, 0.2)
    dot = build_balancer(config(method="dot_adamw", dot_momentum=0.8, dot_delta=0.05))
    assert isinstance(dot, DOT) and (dot.momentum, dot.delta, dot.form) == (0.8, 0.05, "adamw")
    branches = build_balancer(config(method="dot_adamw", dot_second_moment="branches"))
    assert (
        branches.second_moment == "branches" and build_balancer(config(method="dot")).second_moment == "sum"
    )
    assert build_balancer(config(method="dto")).log_gradients and isinstance(
        build_balancer(config(method="dto")), DTOExact
    )
    assert not build_balancer(config(method="upgrad")).log_gradients
    assert isinstance(build_balancer(config(method="upgrad", log_gradients=True)), UPGrad)


def test_two_objective_methods_refuse_more_objectives_naming_the_alternatives(tmp_path):
    with pytest.raises(ValueError, match=r"balancer=FixedWeights\(weights=\[\.\.\.\]\)"):
        build_balancer(DTOKDConfig(output_dir=str(tmp_path), method="fixed"), 3)


def test_a_methods_own_fields_are_refused_with_another_method_naming_the_readers(tmp_path):
    with pytest.raises(
        ValueError, match=r"cagrad_c=0.2 applies to cagrad, not to method='dto'; leave it at 0.4"
    ):
        DTOKDConfig(output_dir=str(tmp_path), cagrad_c=0.2)
    with pytest.raises(
        ValueError, match="tradeoff_learning_rate=0.1 applies to dto_amortized, famo, uncertainty"
    ):
        DTOKDConfig(output_dir=str(tmp_path), method="fixed", tradeoff_learning_rate=0.1)
    with pytest.raises(ValueError, match=r"dot_delta=0.1 applies to dot, dot_adamw"):
        DTOKDConfig(output_dir=str(tmp_path), method="upgrad", dot_delta=0.1)
    # the second moment is the AdamW form's alone
    with pytest.raises(
        ValueError, match=r"dot_second_moment='branches' applies to dot_adamw, not to method='dot'"
    ):
        DTOKDConfig(output_dir=str(tmp_path), method="dot", dot_second_moment="branches")
    # the method's own constructor checks the values, once
    with pytest.raises(ValueError, match="tradeoff_learning_rate"):
        DTOKDConfig(output_dir=str(tmp_path), method="uncertainty", tradeoff_learning_rate=0.0)


def test_method_options_reach_the_constructor_and_unknown_ones_are_named(tmp_path):
    balancer = build_balancer(
        DTOKDConfig(output_dir=str(tmp_path), method="upgrad", method_options='{"scale": 2.0}')
    )
    assert isinstance(balancer, UPGrad) and balancer.scale == 2.0
    with pytest.raises(ValueError, match=r"method_options \{'nope': 1\} do not fit method='fixed'"):
        DTOKDConfig(output_dir=str(tmp_path), method="fixed", method_options={"nope": 1})


def test_the_registry_is_one_class_per_method_and_derives_the_families():
    from hf_dtokd.balancing import GRAMIAN_METHODS, LOOK_AHEAD_METHODS, METHOD_REGISTRY, DOTAdamW

    assert tuple(METHOD_REGISTRY) == METHODS and METHOD_REGISTRY["dot_adamw"] is DOTAdamW
    assert GRAMIAN_METHODS == (
        "dto",
        "mgda",
        "pcgrad",
        "cagrad",
        "upgrad",
        "imtl_g",
        "aligned_mtl",
        "dualproj",
    )
    assert LOOK_AHEAD_METHODS == ("dto_amortized", "famo")
