"""attend() and MultiHeadAttention against a float64 loop and torch.nn.MultiheadAttention."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qkv.nn import MultiHeadAttention, attend, attention, masks
from qkv.nn.attention import products_win
from tests.reference import ATTENTION_ATOL, attention_loop, copy_attention, randomize_norms_and_biases

# Half precision: 11 (float16) or 8 (bfloat16) significant bits; outputs of order 1 are averages of a
# few values of order 1, so they carry an absolute error of a few units in the last place.
HALF_ATOL = {torch.float16: 1e-2, torch.bfloat16: 5e-2}

BATCH, HEADS, Q_LEN, K_LEN, D_HEAD = 2, 3, 5, 6, 4


def random_qkv(rng: torch.Generator, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    q = torch.randn(BATCH, HEADS, Q_LEN, D_HEAD, generator=rng)
    k = torch.randn(BATCH, HEADS, K_LEN, D_HEAD, generator=rng)
    v = torch.randn(BATCH, HEADS, K_LEN, D_HEAD, generator=rng)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def mask_with_empty_rows(rng: torch.Generator) -> torch.Tensor:
    """A random mask (batch, heads, q_len, k_len) in which two query rows may attend to nothing."""
    may_attend = torch.rand(BATCH, HEADS, Q_LEN, K_LEN, generator=rng) > 0.4
    may_attend[0, 1, 2] = False
    may_attend[1, :, 4] = False
    return may_attend


# -- attend() -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "explicit"])
@pytest.mark.parametrize(
    "mask_shape", [None, (BATCH, 1, 1, K_LEN), (BATCH, 1, Q_LEN, K_LEN), (BATCH, HEADS, Q_LEN, K_LEN)]
)
def test_attend_matches_float64_loop(
    rng: torch.Generator, fused: bool, mask_shape: tuple[int, ...] | None
) -> None:
    q, k, v = random_qkv(rng)
    may_attend = None if mask_shape is None else torch.rand(mask_shape, generator=rng) > 0.3
    expected = attention_loop(q, k, v, may_attend)
    context, weights = attend(q, k, v, may_attend, fused=fused)
    assert weights is None
    assert context.shape == (BATCH, HEADS, Q_LEN, D_HEAD)
    torch.testing.assert_close(context.double(), expected, atol=ATTENTION_ATOL, rtol=0)


def test_attend_causal_mask_with_cache_matches_loop(rng: torch.Generator) -> None:
    """Fewer queries than keys (a cache): the bottom-right causal mask, on both paths."""
    q, k, v = random_qkv(rng)
    may_attend = masks.causal(Q_LEN, K_LEN)
    expected = attention_loop(q, k, v, may_attend)
    for fused in (True, False):
        context, _ = attend(q, k, v, may_attend, fused=fused)
        torch.testing.assert_close(context.double(), expected, atol=ATTENTION_ATOL, rtol=0)


def test_attend_weights_are_a_distribution_over_allowed_keys(rng: torch.Generator) -> None:
    q, k, v = random_qkv(rng)
    may_attend = mask_with_empty_rows(rng)
    context, weights = attend(q, k, v, may_attend, need_weights=True)
    assert weights is not None and weights.shape == (BATCH, HEADS, Q_LEN, K_LEN)
    assert bool((weights >= 0).all())
    assert bool((weights[~may_attend] == 0).all())
    has_key = may_attend.any(-1)
    torch.testing.assert_close(
        weights.sum(-1)[has_key], torch.ones(int(has_key.sum())), atol=ATTENTION_ATOL, rtol=0
    )
    assert bool((weights.sum(-1)[~has_key] == 0).all())
    torch.testing.assert_close(
        context.double(), attention_loop(q, k, v, may_attend), atol=ATTENTION_ATOL, rtol=0
    )


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "explicit"])
def test_fully_masked_rows_give_zero_context(rng: torch.Generator, fused: bool) -> None:
    q, k, v = random_qkv(rng)
    may_attend = mask_with_empty_rows(rng)
    context, _ = attend(q, k, v, may_attend, fused=fused)
    assert bool(torch.isfinite(context).all())
    assert bool((context[0, 1, 2] == 0).all()) and bool((context[1, :, 4] == 0).all())
    torch.testing.assert_close(
        context.double(), attention_loop(q, k, v, may_attend), atol=ATTENTION_ATOL, rtol=0
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "explicit"])
def test_fully_masked_rows_in_half_precision(rng: torch.Generator, dtype: torch.dtype, fused: bool) -> None:
    q, k, v = random_qkv(rng, dtype)
    may_attend = mask_with_empty_rows(rng)
    context, _ = attend(q, k, v, may_attend, fused=fused)
    assert context.dtype == dtype
    assert bool(torch.isfinite(context).all())
    assert bool((context[0, 1, 2] == 0).all()) and bool((context[1, :, 4] == 0).all())
    expected = attention_loop(q, k, v, may_attend)
    torch.testing.assert_close(context.double(), expected, atol=HALF_ATOL[dtype], rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_are_finite(rng: torch.Generator, dtype: torch.dtype) -> None:
    q, k, v = random_qkv(rng, dtype)
    may_attend = mask_with_empty_rows(rng)
    _, weights = attend(q, k, v, may_attend, need_weights=True)
    assert weights is not None and bool(torch.isfinite(weights).all())
    assert bool((weights[~may_attend] == 0).all())


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "explicit"])
def test_gradients_through_fully_masked_rows_are_finite(rng: torch.Generator, fused: bool) -> None:
    q, k, v = (t.requires_grad_() for t in random_qkv(rng))
    may_attend = mask_with_empty_rows(rng)
    context, _ = attend(q, k, v, may_attend, fused=fused)
    (context * torch.randn(context.shape, generator=rng)).sum().backward()
    for t in (q, k, v):
        assert t.grad is not None and bool(torch.isfinite(t.grad).all())
    assert bool((q.grad[0, 1, 2] == 0).all())  # a query that attends to nothing has no gradient


def test_products_win_where_measured() -> None:
    """The rule of attention.products_win: many query rows, and short keys or few queries a sentence."""

    def shapes(batch: int, q_len: int, k_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.empty(batch, 4, q_len, 8), torch.empty(batch, 4, k_len, 8)

    assert products_win(*shapes(279, 11, 11))  # a training batch of short sentences
    assert products_win(*shapes(32, 4, 200))  # a beam-4 step over 32 sentences, long cache
    assert not products_win(*shapes(1, 12, 12))  # one sentence: too few rows
    assert not products_win(*shapes(24, 128, 128))  # long sentences
    assert not products_win(*shapes(63, 1, 10))
    assert products_win(*shapes(64, 1, 10))
    assert not products_win(*shapes(8, 49, 49)) and products_win(*shapes(8, 48, 48))


def test_both_ways_agree_in_training(rng: torch.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """At a training shape, the products and the fused kernel give the float64 formula's context and
    gradients, and a query with no allowed key gets zero context and finite (zero) gradients."""
    batch, q_len, k_len = 16, 7, 9
    q0, k0, v0 = (torch.randn(batch, 2, n, 4, generator=rng) for n in (q_len, k_len, k_len))
    may_attend = torch.rand(batch, 1, q_len, k_len, generator=rng) > 0.3
    may_attend[3, :, 2] = False  # a query with no key
    grad_out = torch.randn(batch, 2, q_len, 4, generator=rng)

    def run(dtype: torch.dtype) -> list[torch.Tensor]:
        q, k, v = (t.to(dtype, copy=True).requires_grad_() for t in (q0, k0, v0))
        context, _ = attend(q, k, v, may_attend)
        (context * grad_out.to(dtype)).sum().backward()
        return [context.detach(), *(t.grad for t in (q, k, v))]  # type: ignore[list-item]

    expected = run(torch.float64)
    assert bool((expected[0][3, :, 2] == 0).all())
    for min_rows in (1, 10**9):  # the products, then the fused kernel
        monkeypatch.setattr(attention, "PRODUCTS_MIN_ROWS", min_rows)
        got = run(torch.float32)
        assert products_win(q0, k0) == (min_rows == 1)
        for ours, reference in zip(got, expected, strict=True):
            assert bool(torch.isfinite(ours).all())
            torch.testing.assert_close(ours.double(), reference, atol=1e-5, rtol=0)


# -- MultiHeadAttention against torch.nn.MultiheadAttention -------------------------------------------
D_MODEL, MHA_HEADS = 16, 4


@pytest.fixture
def pair(rng: torch.Generator) -> tuple[MultiHeadAttention, nn.MultiheadAttention]:
    """Our MHA (random non-zero biases) and torch's, holding the same weights; both in eval mode."""
    ours = MultiHeadAttention(D_MODEL, MHA_HEADS)
    randomize_norms_and_biases(ours, rng)
    theirs = nn.MultiheadAttention(D_MODEL, MHA_HEADS, batch_first=True)
    copy_attention(ours, theirs)
    return ours.eval(), theirs.eval()


def key_padding(lengths: list[int], length: int) -> torch.Tensor:
    """torch's key_padding_mask, built by hand: True = padding (ignore)."""
    return torch.tensor([[i >= n for i in range(length)] for n in lengths])


def compare(
    ours: MultiHeadAttention,
    theirs: nn.MultiheadAttention,
    x: torch.Tensor,
    memory: torch.Tensor | None,
    our_mask: torch.Tensor | None,
    **their_masks: torch.Tensor,
) -> None:
    """Our explicit and fused paths against torch with and without weights, all < ATTENTION_ATOL."""
    source = x if memory is None else memory
    # Grad stays enabled so torch does not take its inference fast path (nested tensors).
    expected, expected_weights = theirs(
        x, source, source, need_weights=True, average_attn_weights=False, **their_masks
    )
    expected_unweighted, _ = theirs(x, source, source, need_weights=False, **their_masks)
    explicit, weights = ours(x, memory, our_mask, need_weights=True)
    fused, no_weights = ours(x, memory, our_mask, fused=True)
    unfused, _ = ours(x, memory, our_mask, fused=False)
    assert no_weights is None and weights is not None
    assert weights.shape == expected_weights.shape
    for actual in (explicit, fused, unfused):
        assert actual.shape == x.shape
        torch.testing.assert_close(actual, expected, atol=ATTENTION_ATOL, rtol=0)
        torch.testing.assert_close(actual, expected_unweighted, atol=ATTENTION_ATOL, rtol=0)
    torch.testing.assert_close(weights, expected_weights, atol=ATTENTION_ATOL, rtol=0)
    torch.testing.assert_close(fused, unfused, atol=ATTENTION_ATOL, rtol=0)


def test_self_attention_with_key_padding_matches_torch(pair, rng: torch.Generator) -> None:
    ours, theirs = pair
    x = torch.randn(3, 5, D_MODEL, generator=rng)
    key_padding_mask = key_padding([5, 3, 1], 5)
    compare(
        ours,
        theirs,
        x,
        None,
        masks.from_key_padding_mask(key_padding_mask),
        key_padding_mask=key_padding_mask,
    )


def test_self_attention_with_causal_mask_matches_torch(pair, rng: torch.Generator) -> None:
    ours, theirs = pair
    x = torch.randn(2, 6, D_MODEL, generator=rng)
    is_future = torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1)  # torch: True = not allowed
    compare(ours, theirs, x, None, masks.causal(6), attn_mask=is_future)


def test_self_attention_with_causal_and_padding_masks_matches_torch(pair, rng: torch.Generator) -> None:
    ours, theirs = pair
    x = torch.randn(2, 6, D_MODEL, generator=rng)
    is_future = torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1)
    key_padding_mask = key_padding([6, 4], 6)
    our_mask = masks.from_key_padding_mask(key_padding_mask) & masks.causal(6)
    compare(ours, theirs, x, None, our_mask, attn_mask=is_future, key_padding_mask=key_padding_mask)


def test_cross_attention_with_memory_padding_matches_torch(pair, rng: torch.Generator) -> None:
    ours, theirs = pair
    x = torch.randn(3, 4, D_MODEL, generator=rng)
    memory = torch.randn(3, 7, D_MODEL, generator=rng)
    key_padding_mask = key_padding([7, 2, 5], 7)
    compare(
        ours,
        theirs,
        x,
        memory,
        masks.from_key_padding_mask(key_padding_mask),
        key_padding_mask=key_padding_mask,
    )


def test_cross_attention_without_mask_matches_torch(pair, rng: torch.Generator) -> None:
    ours, theirs = pair
    compare(
        ours,
        theirs,
        torch.randn(2, 3, D_MODEL, generator=rng),
        torch.randn(2, 8, D_MODEL, generator=rng),
        None,
    )


def test_attention_dropout_is_off_in_eval_mode(rng: torch.Generator) -> None:
    ours = MultiHeadAttention(D_MODEL, MHA_HEADS, dropout=0.5)
    theirs = nn.MultiheadAttention(D_MODEL, MHA_HEADS, dropout=0.5, batch_first=True).eval()
    copy_attention(ours, theirs)
    x = torch.randn(2, 5, D_MODEL, generator=rng)
    expected, _ = theirs(x, x, x, need_weights=False)
    for fused in (True, False):
        torch.testing.assert_close(ours.eval()(x, fused=fused)[0], expected, atol=ATTENTION_ATOL, rtol=0)
        assert not torch.allclose(ours.train()(x, fused=fused)[0], expected)  # and on in training


def test_mha_rejects_heads_not_dividing_d_model() -> None:
    with pytest.raises(ValueError, match="d_model=10 must be divisible by heads=4"):
        MultiHeadAttention(10, 4)


def test_inference_self_attention_with_one_qkv_product_matches_torch(rng: torch.Generator) -> None:
    """Without gradients, self-attention projects Q, K, V with one stacked product: torch's MHA (copied
    weights, computed with gradients on) is the reference; padding masked."""
    ours = MultiHeadAttention(D_MODEL, 4)
    randomize_norms_and_biases(ours, rng)
    theirs = nn.MultiheadAttention(D_MODEL, 4, batch_first=True)
    copy_attention(ours, theirs)
    ours.eval(), theirs.eval()
    x = torch.randn(3, 5, D_MODEL, generator=rng)
    key_padding_mask = key_padding([5, 3, 1], 5)
    expected, _ = theirs(x, x, x, key_padding_mask=key_padding_mask, need_weights=False)
    with torch.no_grad():
        stacked, _ = ours(x, None, masks.from_key_padding_mask(key_padding_mask))
    torch.testing.assert_close(stacked, expected, atol=ATTENTION_ATOL, rtol=0)


def test_inference_qkv_product_without_biases_equals_three_products(rng: torch.Generator) -> None:
    ours = MultiHeadAttention(D_MODEL, 4, bias=False).eval()
    x = torch.randn(2, 4, D_MODEL, generator=rng)
    separate, _ = ours(x)  # gradients on: three products
    with torch.no_grad():
        stacked, _ = ours(x)
    torch.testing.assert_close(stacked, separate.detach(), atol=1e-6, rtol=0)


def test_inference_stacked_weights_follow_in_place_changes(rng: torch.Generator) -> None:
    """Inference stacks Q/K/V (and cross K/V) weights: the results follow a projection changed in place
    (even through .data, which torch's version counter does not see) or replaced; weights made in
    inference mode work too."""
    ours = MultiHeadAttention(D_MODEL, 4).eval()
    x, memory = torch.randn(2, 3, D_MODEL, generator=rng), torch.randn(2, 5, D_MODEL, generator=rng)

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return ours(x)[0], ours(x, memory)[0]

    def reference() -> tuple[torch.Tensor, torch.Tensor]:
        return ours(x)[0].detach(), ours(x, memory)[0].detach()  # gradients on: separate products

    for change in (
        lambda: ours.k_proj.weight.data.mul_(2.0),  # in place
        lambda: setattr(ours.v_proj, "weight", nn.Parameter(torch.randn(D_MODEL, D_MODEL))),  # replaced
    ):
        both()
        change()
        for got, expected in zip(both(), reference(), strict=True):
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    with torch.inference_mode():
        made_here = MultiHeadAttention(D_MODEL, 4).eval()
        assert made_here.q_proj.weight.is_inference()
        out, _ = made_here(x)
    with torch.no_grad():
        torch.testing.assert_close(out, made_here(x)[0], atol=1e-6, rtol=0)


# -- why the scores are divided by sqrt(d_k) (section 3.2.1) ----------------------------------------------
def test_unscaled_scores_saturate_the_softmax_and_its_gradient_vanishes(rng: torch.Generator) -> None:
    """Measured at d_k = 512 with q, k of unit-variance components: q . k has variance d_k, the softmax of
    the raw scores is nearly one-hot and passes almost no gradient; divided by sqrt(d_k) it does not."""
    d_k, queries, keys = 512, 256, 16
    q = torch.randn(queries, d_k, generator=rng, dtype=torch.float64)
    k = torch.randn(keys, d_k, generator=rng, dtype=torch.float64)
    upstream = torch.randn(queries, keys, generator=rng, dtype=torch.float64)  # some d loss / d weights

    raw = q @ k.T  # (queries, keys)
    assert 0.85 * d_k < float(raw.var()) < 1.15 * d_k  # the variance grows with d_k ...
    assert 0.85 < float((raw / math.sqrt(d_k)).var()) < 1.15  # ... and the scale brings it back to 1

    def softmax_and_gradient(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The weights, and the norm of d loss / d scores through the softmax for each query."""
        scores = scores.clone().requires_grad_(True)
        weights = torch.softmax(scores, dim=-1)
        (weights * upstream).sum().backward()
        assert scores.grad is not None
        return weights.detach(), scores.grad.norm(dim=-1)

    unscaled, unscaled_grad = softmax_and_gradient(raw)
    scaled, scaled_grad = softmax_and_gradient(raw / math.sqrt(d_k))
    # attend() computes the scaled weights (a check that the reasoning is about the code we run).
    _, weights = attend(q[None, None], k[None, None], k[None, None], need_weights=True)
    assert weights is not None
    torch.testing.assert_close(weights[0, 0], scaled, atol=1e-12, rtol=0)

    # Unscaled, most queries put nearly all their weight on one key (0.94 on average, > 0.99 for 65% of the
    # queries here); scaled, the weight is spread (0.23 on the largest key on average).
    top_unscaled, top_scaled = unscaled.max(dim=-1).values, scaled.max(dim=-1).values
    assert float(top_unscaled.mean()) > 0.9 and float((top_unscaled > 0.99).double().mean()) > 0.5
    assert float(top_scaled.mean()) < 0.5 and not bool((top_scaled > 0.99).any())
    # The typical (median) query's gradient is hundreds of times smaller unscaled (8e-4 against 0.27 here).
    assert float(unscaled_grad.median()) < 0.01 * float(scaled_grad.median())
