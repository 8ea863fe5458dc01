"""The key/value cache: step-by-step self-attention equals full causal attention (torch's MHA as the
reference), cross-attention keys and values computed once, select() reorders rows, buffers grow."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qkv.nn import KVCache, LayerCache, MultiHeadAttention, attention, masks
from tests.reference import ATTENTION_ATOL, copy_attention, randomize_norms_and_biases

D_MODEL, HEADS = 16, 4


def pair(rng: torch.Generator) -> tuple[MultiHeadAttention, nn.MultiheadAttention]:
    ours = MultiHeadAttention(D_MODEL, HEADS)
    randomize_norms_and_biases(ours, rng)
    theirs = nn.MultiheadAttention(D_MODEL, HEADS, batch_first=True)
    copy_attention(ours, theirs)
    return ours.eval(), theirs.eval()


def torch_causal_self_attention(theirs: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    length = x.shape[1]
    is_future = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)  # True = not allowed
    return theirs(x, x, x, attn_mask=is_future, need_weights=False)[0]


def run_in_steps(
    ours: MultiHeadAttention, x: torch.Tensor, steps: list[int], fused: bool
) -> tuple[torch.Tensor, LayerCache]:
    """Feed x through self-attention with a cache, ``steps[i]`` positions at a time."""
    cache = LayerCache()
    outputs, start = [], 0
    for new in steps:
        may_attend = masks.causal(new, start + new)
        out, _ = ours(x[:, start : start + new], None, may_attend, cache=cache, fused=fused)
        outputs.append(out)
        start += new
    return torch.cat(outputs, dim=1), cache


def test_cached_self_attention_equals_full_causal_attention(rng: torch.Generator) -> None:
    ours, theirs = pair(rng)
    x = torch.randn(2, 7, D_MODEL, generator=rng)
    expected = torch_causal_self_attention(theirs, x)
    full, _ = ours(x, None, masks.causal(7))
    torch.testing.assert_close(full, expected, atol=ATTENTION_ATOL, rtol=0)
    for fused in (True, False):
        for steps in ([1] * 7, [3, 1, 1, 2]):  # one token at a time; a prefill, then steps
            stepped, cache = run_in_steps(ours, x, steps, fused)
            assert cache.self_len == 7
            torch.testing.assert_close(stepped, expected, atol=ATTENTION_ATOL, rtol=0)


def test_cache_buffer_grows_beyond_16_positions(rng: torch.Generator) -> None:
    ours, theirs = pair(rng)
    length = 40  # the buffer starts at 16 positions and must double twice
    x = torch.randn(2, length, D_MODEL, generator=rng)
    stepped, cache = run_in_steps(ours, x, [1] * 20 + [5] * 4, fused=True)
    assert cache.self_len == length
    assert cache.self_k is not None and cache.self_k.shape[2] >= length
    torch.testing.assert_close(stepped, torch_causal_self_attention(theirs, x), atol=ATTENTION_ATOL, rtol=0)
    # The cached keys are the key projection of every position, split into heads, by hand.
    with torch.no_grad():
        keys = x @ ours.k_proj.weight.T + ours.k_proj.bias  # (batch, length, d_model)
    keys = keys.view(2, length, HEADS, D_MODEL // HEADS).transpose(1, 2)
    torch.testing.assert_close(cache.self_k[:, :, :length], keys, atol=ATTENTION_ATOL, rtol=0)


def test_cross_attention_keys_and_values_are_computed_once(
    rng: torch.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, theirs = pair(rng)
    projected: list[torch.Tensor] = []  # every input W_K and W_V were applied to
    original = attention.memory_keys_values

    def counting(memory: torch.Tensor, *args: object) -> tuple[torch.Tensor, torch.Tensor]:
        projected.append(memory)
        return original(memory, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(attention, "memory_keys_values", counting)
    memory = torch.randn(2, 5, D_MODEL, generator=rng)
    key_padding_mask = torch.tensor([[False] * 5, [False, False, True, True, True]])
    may_attend = masks.from_key_padding_mask(key_padding_mask)
    cache = LayerCache()
    queries = torch.randn(2, 3, D_MODEL, generator=rng)
    outputs = []
    for step in range(3):
        out, _ = ours(queries[:, step : step + 1], memory, may_attend, cache=cache)
        outputs.append(out)
        if step == 0:
            first_k, first_v = cache.cross_k, cache.cross_v
    assert len(projected) == 1 and projected[0] is memory
    assert cache.cross_k is first_k and cache.cross_v is first_v
    assert cache.self_len == 0 and cache.self_k is None  # cross-attention leaves the self part alone
    expected, _ = theirs(queries, memory, memory, key_padding_mask=key_padding_mask, need_weights=False)
    torch.testing.assert_close(torch.cat(outputs, dim=1), expected, atol=ATTENTION_ATOL, rtol=0)


def filled_cache(rng: torch.Generator, batch: int = 3, layers: int = 2, length: int = 4) -> KVCache:
    cache = KVCache.empty(layers)
    for layer in cache.layers:
        for _ in range(length):
            layer.append_self(
                torch.randn(batch, 2, 1, 4, generator=rng), torch.randn(batch, 2, 1, 4, generator=rng)
            )
        layer.cross_k = torch.randn(batch, 2, 5, 4, generator=rng)
        layer.cross_v = torch.randn(batch, 2, 5, 4, generator=rng)
    return cache


def test_select_reorders_batch_rows(rng: torch.Generator) -> None:
    cache = filled_cache(rng)
    assert cache.length == 4
    picked = cache.select(torch.tensor([2, 0, 0]))
    assert picked.length == 4 and len(picked.layers) == 2
    for old, new in zip(cache.layers, picked.layers, strict=True):
        for name in ("self_k", "self_v", "cross_k", "cross_v"):
            before, after = getattr(old, name), getattr(new, name)
            if name.startswith("self"):  # buffers: only the first self_len positions hold values
                before, after = before[:, :, : old.self_len], after[:, :, : new.self_len]
            for row, source in enumerate([2, 0, 0]):
                torch.testing.assert_close(after[row], before[source], atol=0, rtol=0)
        # the buffers keep their capacity (only the valid prefix is copied): the next append needs no growth
        assert old.self_k is not None and new.self_k is not None
        assert new.self_k.shape[2] == old.self_k.shape[2] > old.self_len


@pytest.mark.parametrize("order", [[1, 1, 0, 3], [0, 1, 2, 3], [3, 2, 1, 0], [2, 2, 2, 2]])
def test_in_place_select_equals_a_copying_select(rng: torch.Generator, order: list[int]) -> None:
    """Rows read their parents before any row is overwritten (swaps, repeats, no move at all), and only
    the self-attention buffers change; the cache object itself is reordered and returned."""
    cache = filled_cache(rng, batch=4)
    indices = torch.tensor(order)
    expected = cache.select(indices, same_sources=True)
    cross_before = [layer.cross_k for layer in cache.layers]
    with torch.inference_mode():
        reordered = cache.select(indices, same_sources=True, in_place=True)
    assert reordered is cache
    for got, want, cross in zip(reordered.layers, expected.layers, cross_before, strict=True):
        assert got.self_k is not None and want.self_k is not None and got.self_v is not None
        assert want.self_v is not None
        n = got.self_len
        torch.testing.assert_close(got.self_k[:, :, :n], want.self_k[:, :, :n], atol=0, rtol=0)
        torch.testing.assert_close(got.self_v[:, :, :n], want.self_v[:, :, :n], atol=0, rtol=0)
        assert got.cross_k is cross


def test_in_place_select_copies_where_it_may_not_reorder(rng: torch.Generator) -> None:
    """A subset of rows, or sources that change, or gradients wanted: a copy, the original untouched."""
    cache = filled_cache(rng, batch=4)
    before = cache.layers[0].self_k[:, :, :4].clone()  # type: ignore[index]
    with torch.inference_mode():
        fewer = cache.select(torch.tensor([1, 0]), same_sources=True, in_place=True)
        moved = cache.select(torch.tensor([1, 0, 3, 2]), in_place=True)
    with_grad = cache.select(torch.tensor([1, 0, 3, 2]), same_sources=True, in_place=True)
    assert fewer is not cache and moved is not cache and with_grad is not cache
    torch.testing.assert_close(cache.layers[0].self_k[:, :, :4], before, atol=0, rtol=0)  # type: ignore[index]


def test_select_gives_an_independent_cache(rng: torch.Generator) -> None:
    cache = filled_cache(rng, batch=2)
    picked = cache.select(torch.tensor([1, 0]))
    snapshot = cache.layers[0].self_k[:, :, :4].clone()
    k_new = torch.randn(2, 2, 1, 4, generator=rng)
    keys, _ = picked.layers[0].append_self(k_new, k_new)
    assert keys.shape == (2, 2, 5, 4)
    assert picked.layers[0].self_len == 5 and cache.layers[0].self_len == 4
    torch.testing.assert_close(cache.layers[0].self_k[:, :, :4], snapshot, atol=0, rtol=0)
    torch.testing.assert_close(keys[:, :, 4:], k_new, atol=0, rtol=0)
    torch.testing.assert_close(keys[0, :, :4], snapshot[1], atol=0, rtol=0)


def test_empty_cache() -> None:
    cache = KVCache.empty(3)
    assert len(cache.layers) == 3 and cache.length == 0
    assert KVCache().length == 0
