"""Backend rules that cannot run on this CPU-only machine (FSDP, DeepSpeed), tested on their configuration path."""

import pytest
import torch
from accelerate.utils import DistributedType

from hf_dtokd import DTOKDTrainer
from hf_dtokd.runtime.backends import backward, check_backend_support, deepspeed_teacher_config
from testing_utils import tiny_args, tiny_resnet, tiny_vit


@pytest.mark.parametrize(
    ("method", "placement", "needs_gradients", "owns_update", "backend", "message"),
    [
        (
            "dto",
            "parameters",
            True,
            False,
            "fsdp",
            "FSDP1 shards the gradients.*gradient_placement='representation'.*FSDP2",
        ),
        (
            "upgrad",
            "parameters",
            True,
            False,
            "deepspeed",
            "DeepSpeed reduces the gradients into its own partitioned buffers.*'representation'",
        ),
        (
            "dot",
            "parameters",
            True,
            True,
            "deepspeed",
            r"Use method='dto_amortized' or 'fixed', or plain DDP$",
        ),
        ("dot", "parameters", True, True, "fsdp", "FSDP shards"),
        ("dto", "parameters", True, False, "fp16", "does not support fp16 loss scaling; use bf16=True"),
    ],
)
def test_combinations_that_cannot_be_correct_are_refused_with_the_alternative(
    method, placement, needs_gradients, owns_update, backend, message
):
    flags = {"fsdp": backend == "fsdp", "deepspeed": backend == "deepspeed", "fp16": backend == "fp16"}
    with pytest.raises(ValueError, match=message):
        check_backend_support(method, placement, needs_gradients, owns_update, **flags)


@pytest.mark.parametrize("backend", ["fsdp", "deepspeed", "fp16"])
@pytest.mark.parametrize(
    ("method", "placement", "needs_gradients"),
    [("dto", "representation", True), ("dto_amortized", "parameters", False), ("fixed", "parameters", False)],
)
def test_one_backward_methods_run_on_every_backend(backend, method, placement, needs_gradients):
    flags = {"fsdp": backend == "fsdp", "deepspeed": backend == "deepspeed", "fp16": backend == "fp16"}
    check_backend_support(method, placement, needs_gradients, False, **flags)


def test_fsdp2_takes_the_gram_methods_at_the_parameters_but_not_dot():
    flags = {"fsdp": True, "fsdp2": True, "deepspeed": False, "fp16": False}
    check_backend_support("dto", "parameters", True, False, **flags)
    check_backend_support("upgrad", "parameters", True, False, gram_parameters="student", **flags)
    with pytest.raises(ValueError, match="DOT's update reads which parameters each loss reaches"):
        check_backend_support("dot", "parameters", True, True, **flags)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"gram_parameters": "shared"},
            "gram_parameters='shared'.*gathered parameters.*use gram_parameters='all'",
        ),
        ({"one_loss_parameters": "own"}, "one_loss_parameters='own'.*use one_loss_parameters='weighted'"),
        ({"batched_gradients": True}, "one backward per objective instead.*Leave it False"),
    ],
)
def test_fsdp2_refuses_the_options_that_read_the_graph_s_parameters(options, message):
    flags = {"fsdp": True, "fsdp2": True, "deepspeed": False, "fp16": False}
    with pytest.raises(ValueError, match=message):
        check_backend_support("dto", "parameters", True, False, **flags, **options)


def test_the_trainer_runs_the_check_at_start(tmp_path):
    with pytest.raises(ValueError, match="fp16 loss scaling"):
        DTOKDTrainer(
            model=tiny_vit(), teacher_model=tiny_resnet(), args=tiny_args(tmp_path, method="dot", fp16=True)
        )


class RecordingAccelerator:
    def __init__(self, distributed_type):
        self.distributed_type, self.calls = distributed_type, []

    def backward(self, loss, **kwargs):
        self.calls.append(kwargs)


def test_deepspeed_backward_does_not_divide_by_the_accumulation_steps_again():
    loss = torch.ones((), requires_grad=True)
    deepspeed, ddp = (
        RecordingAccelerator(DistributedType.DEEPSPEED),
        RecordingAccelerator(DistributedType.MULTI_GPU),
    )
    backward(deepspeed, loss)
    backward(ddp, loss)
    assert deepspeed.calls == [{"scale_wrt_gas": False}] and ddp.calls == [{}]


def test_deepspeed_teacher_config_keeps_zero3_and_disables_other_stages():
    training = {
        "train_micro_batch_size_per_gpu": 8,
        "bf16": {"enabled": True},
        "optimizer": {"type": "AdamW"},
        "scheduler": {"type": "WarmupLR"},
        "zero_optimization": {"stage": 2, "overlap_comm": True},
    }
    teacher = deepspeed_teacher_config(training)
    assert teacher == {
        "train_micro_batch_size_per_gpu": 8,
        "bf16": {"enabled": True},
        "zero_optimization": {"stage": 0},
    }
    assert (
        training["zero_optimization"]["stage"] == 2 and "optimizer" in training
    )  # the student's is untouched
    zero3 = deepspeed_teacher_config(
        {**training, "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}}
    )
    assert zero3["zero_optimization"] == {"stage": 3, "offload_param": {"device": "cpu"}}


def test_fsdp2_sharding_is_allowed_for_models_without_a_separate_token_embedding():
    """accelerate's fsdp2_prepare_model shards get_input_embeddings() on its own: a ResNet has none (transformers
    raises) and a ViT's patch embedding already sits in a no-split unit; both must answer None. A module whose
    embedding is its own stays as it was."""
    from hf_dtokd.runtime.backends import allow_fsdp2_sharding

    resnet, vit = tiny_resnet(), tiny_vit()
    with pytest.raises(NotImplementedError):
        resnet.get_input_embeddings()
    assert allow_fsdp2_sharding(resnet).get_input_embeddings() is None
    assert vit.get_input_embeddings() is not None
    assert allow_fsdp2_sharding(vit).get_input_embeddings() is None

    class WithEmbedding(torch.nn.Module):
        _no_split_modules = ["Linear"]

        def __init__(self):
            super().__init__()
            self.embed, self.head = torch.nn.Embedding(4, 2), torch.nn.Linear(2, 2)

        def get_input_embeddings(self):
            return self.embed

    model = WithEmbedding()
    assert allow_fsdp2_sharding(model).get_input_embeddings() is model.embed
