import pytest
import torch

from hf_dtokd.balancing import raw_loss_weights, shifted_losses


def test_shift_uses_min_loss_and_eps():
    shifted = shifted_losses(torch.tensor([1.0, -0.5]), min_loss=-1.0, eps=1e-3)
    assert shifted.tolist() == pytest.approx([2.001, 0.501])


def test_famo_rescale_makes_weights_sum_to_one_and_none_keeps_the_literal_direction():
    pi, shifted = torch.tensor([0.25, 0.75]), torch.tensor([0.5, 3.0])
    literal = raw_loss_weights(pi, shifted, "none")
    assert literal.tolist() == pytest.approx([0.5, 0.25])
    rescaled = raw_loss_weights(pi, shifted, "famo")
    assert rescaled.tolist() == pytest.approx([0.5 / 0.75, 0.25 / 0.75])


def test_unknown_rescale_rule_names_the_valid_ones():
    with pytest.raises(ValueError, match="famo, none"):
        raw_loss_weights(torch.ones(2), torch.ones(2), "mean")
