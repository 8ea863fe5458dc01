"""qkv's fast CPU dropout against the definition: P(zero) = p, survivors scaled by 1/(1-p), identity in eval."""

from __future__ import annotations

import math

import pytest
import torch

from qkv.nn.dropout import Dropout, dropout, keep_mask

N = 400_000


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_drops_each_element_with_probability_p_and_rescales_the_rest(p: float) -> None:
    torch.manual_seed(0)
    x = torch.rand(N) + 0.5  # no zeros of its own
    y = dropout(x, p)
    dropped = y == 0
    # Binomial(N, p): 5 standard deviations, plus the 1/32768 quantisation of p.
    tolerance = 5 * math.sqrt(p * (1 - p) / N) + 1 / 32768
    assert abs(float(dropped.float().mean()) - p) < tolerance
    kept_ratio = y[~dropped] / x[~dropped]
    p_effective = round(p * 32768) / 32768
    torch.testing.assert_close(kept_ratio, torch.full_like(kept_ratio, 1 / (1 - p_effective)))
    # E[dropout(x)] = x: the mean of many survivors-and-zeros of a constant is the constant.
    ones = dropout(torch.ones(N), p)
    assert abs(float(ones.mean()) - 1.0) < 5 * math.sqrt(p / (1 - p) / N)


def test_neighbouring_elements_are_independent() -> None:
    """Four elements share one 64-bit draw: their bits must not be correlated."""
    torch.manual_seed(1)
    p = 0.5
    dropped = keep_mask((N,), p).logical_not().view(-1, 4).float()
    for a in range(4):
        for b in range(a + 1, 4):
            both = float((dropped[:, a] * dropped[:, b]).mean())
            assert abs(both - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / (N // 4)), (a, b)


def test_eval_mode_and_p_zero_are_the_identity_and_p_one_zeroes() -> None:
    x = torch.randn(3, 5)
    layer = Dropout(0.3).eval()
    assert layer(x) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))


def test_same_seed_same_mask_and_gradient_is_the_mask_times_the_scale() -> None:
    x = torch.randn(7, 9, requires_grad=True)
    torch.manual_seed(3)
    y = dropout(x, 0.25)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.25), y)
    assert not torch.equal(dropout(x, 0.25), y)  # the generator moved on: a new mask
    y.sum().backward()
    assert x.grad is not None
    expected = torch.where(y != 0, 1 / (1 - 0.25), 0.0)
    torch.testing.assert_close(x.grad, expected)


def test_bad_probability_is_rejected() -> None:
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.5)
    with pytest.raises(ValueError, match="dropout probability"):
        dropout(torch.ones(2), -0.1)
