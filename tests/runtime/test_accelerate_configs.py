"""The accelerate YAMLs under examples/accelerate/ are valid for the installed accelerate's launcher (the FSDP2 and
DeepSpeed ones are also launched from these files, on 2 CPU processes, by tests/distributed/test_sharded.py)."""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.commands.launch import launch_command_parser

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "examples" / "accelerate").glob("*.yaml"))
LAUNCH_FLAGS = {action.dest for action in launch_command_parser()._actions}


def test_every_backend_has_a_config():
    assert {c.stem for c in CONFIGS} >= {
        "multi_gpu",
        "multi_node",
        "fsdp2",
        "deepspeed_zero2",
        "deepspeed_zero3",
        "fp8_ao",
        "fp8_te",
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_every_nested_key_is_a_launcher_flag(path):
    config = ClusterConfig.from_yaml_file(str(path))  # unknown top-level keys raise here
    assert config.num_processes >= 8 and config.use_cpu is False
    nested = {**(config.fsdp_config or {}), **(config.deepspeed_config or {})}
    # the launcher prefixes fp8_config keys with "fp8_" unless they already contain "fp8"
    nested.update({k if "fp8" in k else f"fp8_{k}": v for k, v in (config.fp8_config or {}).items()})
    unknown = sorted(set(nested) - LAUNCH_FLAGS)
    assert not unknown, f"{path.name}: keys the launcher does not know: {unknown}"
    if path.stem.startswith("fp8"):
        assert config.mixed_precision == "fp8" and config.fp8_config["backend"] == path.stem[4:].upper()
    if path.stem.startswith("deepspeed"):
        assert config.deepspeed_config["zero_stage"] == int(path.stem[-1])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_names_its_backend(path):
    """The backend the file's name promises; the FSDP2 and DeepSpeed files are also launched, on 2 CPU processes,
    by tests/distributed/test_sharded.py."""
    config = ClusterConfig.from_yaml_file(str(path))
    expected = {"fsdp2": "FSDP", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED"}
    assert config.distributed_type == expected.get(path.stem, "MULTI_GPU")
    if path.stem == "fsdp2":
        assert config.fsdp_config["fsdp_version"] == 2
