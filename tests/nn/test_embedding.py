"""TokenEmbedding: lookup times sqrt(d_model) (section 3.4), and the tied output projection x E^T."""

from __future__ import annotations

import torch

from qkv.nn import TokenEmbedding

# Hand computations in float64 against float32 results of order 1: float32 rounding only.
ATOL = 1e-6


def test_lookup_is_scaled_by_sqrt_d_model() -> None:
    embed = TokenEmbedding(10, 16)  # sqrt(16) = 4
    ids = torch.tensor([[3, 0, 9], [1, 1, 2]])
    out = embed(ids)
    assert out.shape == (2, 3, 16)
    weight = embed.weight.detach()
    for b in range(2):
        for t in range(3):
            torch.testing.assert_close(out[b, t], 4.0 * weight[ids[b, t]], atol=ATOL, rtol=0)


def test_unscaled_lookup_for_bert() -> None:
    embed = TokenEmbedding(10, 16, scale=False)
    ids = torch.tensor([[4, 5]])
    assert torch.equal(embed(ids)[0], embed.weight.detach()[[4, 5]])


def test_pad_row_starts_at_zero_and_init_std() -> None:
    embed = TokenEmbedding(2000, 64, pad_id=3)
    assert bool((embed.weight[3] == 0).all())
    # Initialised with std d_model^-0.5 = 0.125, so scaled vectors have entries of std ~1.
    assert abs(embed.weight.std().item() - 0.125) < 0.005


def test_tied_logits_equal_x_times_embedding_transpose(rng: torch.Generator) -> None:
    embed = TokenEmbedding(7, 4)
    x = torch.randn(2, 3, 4, generator=rng)
    logits = embed.logits(x)
    assert logits.shape == (2, 3, 7)
    weight = embed.weight.detach().double().tolist()
    for b in range(2):
        for t in range(3):
            row = x[b, t].double().tolist()
            expected = [sum(row[c] * weight[token][c] for c in range(4)) for token in range(7)]
            torch.testing.assert_close(
                logits[b, t].double(), torch.tensor(expected, dtype=torch.float64), atol=ATOL, rtol=0
            )
