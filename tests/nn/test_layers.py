"""EncoderLayer and DecoderLayer against torch.nn.TransformerEncoderLayer / TransformerDecoderLayer
with copied weights, post-LN (the paper) and pre-LN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qkv.nn import DecoderLayer, EncoderLayer, LayerCache, masks
from tests.reference import (
    ATTENTION_ATOL,
    copy_decoder_layer,
    copy_encoder_layer,
    randomize_norms_and_biases,
)

D_MODEL, HEADS, D_FF = 16, 4, 32
# One layer is three or four float32 sublayers of order-1 values: a few times one attention's tolerance.
LAYER_ATOL = 2 * ATTENTION_ATOL

SRC_LENGTHS, TGT_LENGTHS = [6, 3], [5, 2]


def key_padding(lengths: list[int], length: int) -> torch.Tensor:
    """torch's key_padding_mask by hand: True = padding."""
    return torch.tensor([[i >= n for i in range(length)] for n in lengths])


def is_future(length: int) -> torch.Tensor:
    """torch's attn_mask by hand: True = may NOT attend."""
    return torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)


def real(x: torch.Tensor, lengths: list[int]) -> list[torch.Tensor]:
    return [x[b, :n] for b, n in enumerate(lengths)]


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_layer_matches_torch(rng: torch.Generator, norm_first: bool, activation: str) -> None:
    ours = EncoderLayer(
        D_MODEL, HEADS, D_FF, dropout=0.0, activation=activation, norm_first=norm_first
    ).eval()
    randomize_norms_and_biases(ours, rng)
    theirs = nn.TransformerEncoderLayer(
        D_MODEL, HEADS, D_FF, dropout=0.0, activation=activation, batch_first=True, norm_first=norm_first
    ).eval()
    copy_encoder_layer(ours, theirs)
    x = torch.randn(2, 6, D_MODEL, generator=rng)
    padding = key_padding(SRC_LENGTHS, 6)
    expected = theirs(x, src_key_padding_mask=padding)  # grad enabled: no nested-tensor fast path
    for fused in (True, False):
        out, weights = ours(x, masks.from_key_padding_mask(padding), fused=fused)
        assert weights is None
        for a, b in zip(real(out, SRC_LENGTHS), real(expected, SRC_LENGTHS), strict=True):
            torch.testing.assert_close(a, b, atol=LAYER_ATOL, rtol=0)
    _, weights = ours(x, masks.from_key_padding_mask(padding), need_weights=True)
    assert weights is not None and weights.shape == (2, HEADS, 6, 6)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_decoder_layer_matches_torch(rng: torch.Generator, norm_first: bool) -> None:
    ours = DecoderLayer(D_MODEL, HEADS, D_FF, dropout=0.0, norm_first=norm_first).eval()
    randomize_norms_and_biases(ours, rng)
    theirs = nn.TransformerDecoderLayer(
        D_MODEL, HEADS, D_FF, dropout=0.0, batch_first=True, norm_first=norm_first
    ).eval()
    copy_decoder_layer(ours, theirs)
    x = torch.randn(2, 5, D_MODEL, generator=rng)
    memory = torch.randn(2, 6, D_MODEL, generator=rng)
    tgt_padding, src_padding = key_padding(TGT_LENGTHS, 5), key_padding(SRC_LENGTHS, 6)
    expected = theirs(
        x,
        memory,
        tgt_mask=is_future(5),
        tgt_key_padding_mask=tgt_padding,
        memory_key_padding_mask=src_padding,
    )
    self_ok = masks.from_key_padding_mask(tgt_padding) & masks.causal(5)
    memory_ok = masks.from_key_padding_mask(src_padding)
    for fused in (True, False):
        out, self_weights, cross_weights = ours(x, memory, self_ok, memory_ok, fused=fused)
        assert self_weights is None and cross_weights is None
        for a, b in zip(real(out, TGT_LENGTHS), real(expected, TGT_LENGTHS), strict=True):
            torch.testing.assert_close(a, b, atol=LAYER_ATOL, rtol=0)
    _, self_weights, cross_weights = ours(x, memory, self_ok, memory_ok, need_weights=True)
    assert self_weights is not None and self_weights.shape == (2, HEADS, 5, 5)
    assert cross_weights is not None and cross_weights.shape == (2, HEADS, 5, 6)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_decoder_layer_with_cache_matches_torch(rng: torch.Generator, norm_first: bool) -> None:
    ours = DecoderLayer(D_MODEL, HEADS, D_FF, dropout=0.0, norm_first=norm_first).eval()
    randomize_norms_and_biases(ours, rng)
    theirs = nn.TransformerDecoderLayer(
        D_MODEL, HEADS, D_FF, dropout=0.0, batch_first=True, norm_first=norm_first
    ).eval()
    copy_decoder_layer(ours, theirs)
    x = torch.randn(2, 5, D_MODEL, generator=rng)
    memory = torch.randn(2, 6, D_MODEL, generator=rng)
    src_padding = key_padding(SRC_LENGTHS, 6)
    expected = theirs(x, memory, tgt_mask=is_future(5), memory_key_padding_mask=src_padding)
    cache, outputs = LayerCache(), []
    for t in range(5):
        out, _, _ = ours(
            x[:, t : t + 1],
            memory,
            masks.causal(1, t + 1),
            masks.from_key_padding_mask(src_padding),
            cache=cache,
        )
        outputs.append(out)
    torch.testing.assert_close(torch.cat(outputs, dim=1), expected, atol=LAYER_ATOL, rtol=0)
