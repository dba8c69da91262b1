"""teacher_cache=True: the teacher's logits computed once with Dataset.map give the same training as a live
teacher, the teacher is not run during training, and datasets whose pixels change per epoch are refused."""

import pytest
import torch

from hf_dtokd import DTOKDTrainer
from hf_dtokd.tasks.classification.feature_kd import FeatureKDTrainer
from hf_dtokd.trainer.teacher_cache import TEACHER_LOGITS, process_rows
from testing_utils import (
    flat_params,
    random_images,
    tiny_args,
    tiny_resnet,
    tiny_vit,
    train_logs,
    whole_batch,
)


class CountCalls:
    def __init__(self, module):
        self.calls = 0
        module.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.calls += 1


@pytest.mark.parametrize("method", ["dto", "dto_amortized"])
def test_cached_logits_train_like_the_live_teacher_and_the_teacher_is_not_run(tmp_path, method):
    runs = {}
    for cache in (False, True):
        args = tiny_args(
            tmp_path / str(cache),
            method=method,
            teacher_cache=cache,
            max_steps=3,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=2,
        )
        trainer = DTOKDTrainer(
            model=tiny_vit(), teacher_model=tiny_resnet(), args=args, train_dataset=random_images(16)
        )
        calls = CountCalls(trainer.teacher)
        trainer.train()
        runs[cache] = (flat_params(trainer.model), train_logs(trainer, "pi_distill"), calls.calls)
    (live, pi_live, live_calls), (cached, pi_cached, cached_calls) = runs[False], runs[True]
    assert live_calls == 6 and cached_calls == 0  # 3 steps x 2 micro-batches
    assert pi_cached == pytest.approx(pi_live, abs=1e-6)
    assert torch.allclose(cached, live, atol=1e-6)
    assert not torch.allclose(cached, flat_params(tiny_vit()), atol=1e-4)


def test_the_column_holds_the_mapped_teacher_logits_of_each_row(tmp_path):
    data = random_images(12)
    teacher = tiny_resnet(num_labels=6)
    args = tiny_args(
        tmp_path, teacher_cache=True, teacher_label_indices=[5, 0, 3, 1], per_device_eval_batch_size=5
    )
    trainer = DTOKDTrainer(model=tiny_vit(), teacher_model=teacher, args=args, train_dataset=data)
    column = trainer.train_dataset[:][TEACHER_LOGITS]
    with torch.no_grad():
        expected = teacher(pixel_values=whole_batch(data)[0]).logits[:, [5, 0, 3, 1]]
    assert trainer.train_dataset.format["type"] == "torch" and column.dtype == torch.float32
    assert torch.allclose(column, expected, atol=1e-5)
    assert trainer.train_dataset.column_names == [*data.column_names, TEACHER_LOGITS]


def test_per_epoch_pixels_and_other_signals_are_refused(tmp_path):
    args = tiny_args(tmp_path, teacher_cache=True)

    def augment(batch):
        return {
            "pixel_values": [torch.as_tensor(p) + torch.randn(1) for p in batch["pixel_values"]],
            "labels": batch["labels"],
        }

    with pytest.raises(ValueError, match="on-the-fly transform"):
        DTOKDTrainer(
            model=tiny_vit(),
            teacher_model=tiny_resnet(),
            args=args,
            train_dataset=random_images(8).with_transform(augment),
        )
    with pytest.raises(TypeError, match="datasets.Dataset"):
        DTOKDTrainer(
            model=tiny_vit(),
            teacher_model=tiny_resnet(),
            args=args,
            train_dataset=torch.utils.data.TensorDataset(torch.zeros(2)),
        )
    with pytest.raises(ValueError, match="needs more of the teacher"):
        FeatureKDTrainer(
            model=tiny_vit(), teacher_model=tiny_resnet(), args=args, train_dataset=random_images(8)
        )
    with pytest.raises(ValueError, match="needs a train_dataset"):
        DTOKDTrainer(model=tiny_vit(), teacher_model=tiny_resnet(), args=args)


def test_every_process_runs_the_same_number_of_rows_and_together_they_cover_the_set():
    shares = [process_rows(10, 3, rank) for rank in range(3)]
    assert shares == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 9, 9]]
    assert process_rows(4, 1, 0) == [0, 1, 2, 3]
    assert [process_rows(2, 4, rank) for rank in range(4)] == [[0], [1], [1], [1]]
    with pytest.raises(ValueError, match="empty"):
        process_rows(0, 2, 0)
