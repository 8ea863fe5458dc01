"""The GNMT length penalty, checked by hand."""

from __future__ import annotations

import pytest
import torch

from qkv.decode.hypothesis import length_penalty


def test_length_penalty_by_hand() -> None:
    # lp = ((5 + |Y|) / 6) ** alpha
    assert length_penalty(1, 1.0) == 1.0  # (5 + 1) / 6
    assert length_penalty(7, 1.0) == 2.0  # 12 / 6
    assert length_penalty(4, 2.0) == pytest.approx(2.25)  # (9 / 6) ** 2
    assert length_penalty(19, 0.5) == pytest.approx(2.0)  # sqrt(24 / 6)
    assert length_penalty(123, 0.0) == 1.0  # alpha 0: plain log-probability
    assert length_penalty(3, 0.6) == pytest.approx((8 / 6) ** 0.6)


def test_length_penalty_of_a_tensor_matches_ints() -> None:
    lengths = torch.tensor([1, 4, 7, 19])
    penalties = length_penalty(lengths, 1.0)
    assert penalties.dtype == torch.float32
    torch.testing.assert_close(penalties, torch.tensor([1.0, 1.5, 2.0, 4.0]))
