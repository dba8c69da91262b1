"""Stage features, their pairing and resampling."""

import pytest
import torch

from hf_dtokd.signals.features import evenly_spaced, pair_stages, resample_to, stage_features


def test_tokens_become_maps_without_their_prefix_tokens():
    tokens = torch.arange(2 * 18 * 3, dtype=torch.float32).reshape(2, 18, 3)  # 2 prefix tokens + 4x4 patches
    (stage,) = stage_features({"hidden_states": (tokens[:, :1], tokens)}, "student")
    assert stage.shape == (2, 3, 4, 4)
    assert torch.equal(stage[1, 2, 1, 3], tokens[1, 2 + 1 * 4 + 3, 2])  # patch (row 1, col 3), channel 2


def test_maps_pass_through_and_the_embeddings_are_skipped():
    maps = (torch.zeros(1, 2, 8, 8), torch.ones(1, 4, 4, 4), torch.ones(1, 8, 2, 2))
    assert [m.shape[1] for m in stage_features({"hidden_states": maps}, "teacher")] == [4, 8]
    with pytest.raises(ValueError, match="the teacher returned no hidden_states"):
        stage_features({"logits": torch.zeros(1, 3)}, "teacher")


def test_pairs_are_evenly_spaced_and_end_at_the_last_stages():
    assert evenly_spaced(2, 4) == [0, 3] and evenly_spaced(1, 5) == [4] and evenly_spaced(3, 3) == [0, 1, 2]
    assert pair_stages(4, 2) == [(0, 0), (3, 1)]
    assert pair_stages(1, 3) == [(0, 2)]
    assert pair_stages(4, 3, [1, 3], [0, 2]) == [(1, 0), (3, 2)]


def test_bad_stage_choices_name_the_available_stages():
    with pytest.raises(ValueError, match=r"feature stages \[5\] do not exist: the teacher exposes 3 stages"):
        pair_stages(4, 3, [1], [5])
    with pytest.raises(ValueError, match="pair one to one"):
        pair_stages(4, 3, [1, 2], [0])
    with pytest.raises(ValueError, match="give both"):
        pair_stages(4, 3, [1], None)


def test_resampling_matches_bilinear_interpolation():
    x = torch.randn(1, 2, 4, 4)
    assert resample_to(x, (4, 4)) is x
    up = resample_to(x, (8, 8))
    assert up.shape == (1, 2, 8, 8)
    assert torch.allclose(up, torch.nn.functional.interpolate(x, size=(8, 8), mode="bilinear"))
    assert resample_to(x, (2, 2)).shape == (1, 2, 2, 2)
