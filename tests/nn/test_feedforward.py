"""FeedForward against the hand formula FFN(x) = act(x W1^T + b1) W2^T + b2 in float64 (section 3.3)."""

from __future__ import annotations

import math

import pytest
import torch

from qkv.nn import FeedForward
from tests.reference import ATTENTION_ATOL as ATOL  # one float32 sublayer, values of order 1
from tests.reference import randomize_norms_and_biases


def gelu(h: torch.Tensor) -> torch.Tensor:
    """The exact GELU, h * Phi(h), with Phi the standard normal CDF."""
    return 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_matches_hand_formula(rng: torch.Generator, activation: str) -> None:
    ffn = FeedForward(8, 32, activation=activation, dropout=0.5).eval()  # eval: dropout is identity
    randomize_norms_and_biases(ffn, rng)
    x = torch.randn(2, 5, 8, generator=rng)
    w1, b1 = ffn.fc_in.weight.detach().double(), ffn.fc_in.bias.detach().double()
    w2, b2 = ffn.fc_out.weight.detach().double(), ffn.fc_out.bias.detach().double()
    hidden = x.double() @ w1.T + b1
    hidden = hidden.clamp(min=0) if activation == "relu" else gelu(hidden)
    expected = hidden @ w2.T + b2
    out = ffn(x)
    assert out.shape == (2, 5, 8)
    torch.testing.assert_close(out.double(), expected, atol=ATOL, rtol=0)


def test_each_position_separately(rng: torch.Generator) -> None:
    ffn = FeedForward(8, 16)
    x = torch.randn(1, 4, 8, generator=rng)
    whole = ffn(x)
    for t in range(4):
        torch.testing.assert_close(ffn(x[:, t : t + 1]), whole[:, t : t + 1], atol=ATOL, rtol=0)


def test_dropout_is_active_in_training() -> None:
    ffn = FeedForward(8, 64, dropout=0.5).train()
    x = torch.randn(1, 3, 8)
    assert not torch.equal(ffn(x), ffn.eval()(x))


def test_unknown_activation_is_rejected() -> None:
    with pytest.raises(ValueError, match="activation='tanh'"):
        FeedForward(8, 16, activation="tanh")  # type: ignore[arg-type]
