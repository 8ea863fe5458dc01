"""qkv.nn.masks against masks written out by hand (True = may attend)."""

from __future__ import annotations

import pytest
import torch

from qkv.nn import masks

T, F = True, False


def test_padding_marks_real_tokens() -> None:
    ids = torch.tensor([[5, 6, 7, 0], [8, 0, 0, 0]])
    may_attend = masks.padding(ids, pad_id=0)
    assert may_attend.dtype == torch.bool
    assert may_attend.shape == (2, 1, 1, 4)
    assert may_attend[:, 0, 0].tolist() == [[T, T, T, F], [T, F, F, F]]


def test_padding_uses_the_given_pad_id() -> None:
    ids = torch.tensor([[0, 3, 3]])
    assert masks.padding(ids, pad_id=3)[0, 0, 0].tolist() == [T, F, F]


def test_causal_square_is_lower_triangular() -> None:
    may_attend = masks.causal(3)
    assert may_attend.dtype == torch.bool
    assert may_attend.tolist() == [[T, F, F], [T, T, F], [T, T, T]]


def test_causal_one_query_sees_every_cached_key() -> None:
    # With a cache, the single new query is the last position: it may see all five keys.
    assert masks.causal(1, 5).tolist() == [[T, T, T, T, T]]


def test_causal_aligns_to_the_bottom_right() -> None:
    assert masks.causal(2, 5).tolist() == [[T, T, T, T, F], [T, T, T, T, T]]
    assert masks.causal(3, 4).tolist() == [[T, T, F, F], [T, T, T, F], [T, T, T, T]]


def test_causal_rejects_fewer_keys_than_queries() -> None:
    with pytest.raises(ValueError, match="k_len >= q_len"):
        masks.causal(3, 2)


def test_masks_combine_and_broadcast() -> None:
    ids = torch.tensor([[4, 4, 0], [4, 0, 0]])
    may_attend = masks.padding(ids, 0) & masks.causal(3)
    assert may_attend.shape == (2, 1, 3, 3)
    assert may_attend[1, 0].tolist() == [[T, F, F], [T, F, F], [T, F, F]]


def test_key_padding_mask_conversion_round_trip() -> None:
    # torch.nn.MultiheadAttention: True = ignore this key.
    key_padding_mask = torch.tensor([[F, F, T], [F, T, T]])
    may_attend = masks.from_key_padding_mask(key_padding_mask)
    assert may_attend.shape == (2, 1, 1, 3)
    assert may_attend[:, 0, 0].tolist() == [[T, T, F], [T, F, F]]
    assert torch.equal(masks.to_key_padding_mask(may_attend), key_padding_mask)
    ours = masks.padding(torch.tensor([[1, 2, 0], [1, 0, 0]]), 0)
    assert torch.equal(masks.from_key_padding_mask(masks.to_key_padding_mask(ours)), ours)


def test_from_key_padding_mask_accepts_non_bool() -> None:
    assert masks.from_key_padding_mask(torch.tensor([[0, 1]]))[0, 0, 0].tolist() == [T, F]


def test_none_if_all_allowed_drops_only_masks_that_allow_everything() -> None:
    everything = masks.padding(torch.tensor([[5, 6, 7]]), pad_id=0)
    assert masks.none_if_all_allowed(everything) is None
    padded = masks.padding(torch.tensor([[5, 6, 0]]), pad_id=0)
    assert masks.none_if_all_allowed(padded) is padded
