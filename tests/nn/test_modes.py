"""eval_mode: dropout off inside the block, the previous mode back after it, and no walk when already off."""

from __future__ import annotations

import pytest
from torch import nn

from qkv.nn.modes import eval_mode


def test_switches_to_eval_and_back_even_on_error() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train()
    with eval_mode(model):
        assert not model.training and not model[1].training
    assert model.training and model[1].training
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("boom")
    assert model.training and model[1].training


def test_a_model_in_eval_mode_is_not_walked() -> None:
    class Counting(nn.Module):
        calls = 0

        def train(self, mode: bool = True) -> Counting:
            Counting.calls += 1
            return super().train(mode)

    model = Counting().eval()
    Counting.calls = 0
    with eval_mode(model):
        assert not model.training
    assert Counting.calls == 0 and not model.training
