"""Attention masks: the one convention used everywhere in qkv.

A mask is a ``bool`` tensor where **True means "may attend"** (the convention of
``torch.nn.functional.scaled_dot_product_attention``). Masks broadcast to
``(batch, heads, q_len, k_len)`` and combine with ``&``::

    src_ok = masks.padding(src_ids, pad_id)                                   # (batch, 1, 1, src_len)
    tgt_ok = masks.padding(tgt_ids, pad_id) & masks.causal(tgt_len, tgt_len)  # (batch, 1, tgt, tgt)

Why the decoder needs the causal mask (section 3.2.3): in training, the decoder reads the whole target
sentence at once (teacher forcing) and predicts every next token in parallel. Without the mask, the query
at position i would see the keys of positions i+1, ..., which hold the very tokens it is asked to predict:
the model would learn to copy, and at inference time, where those tokens do not exist yet, it would have
nothing to copy. The mask keeps training and generation the same computation: position i sees 0 .. i only.
The padding mask has a plainer reason: a pad token is no word, so no query may give it weight.

``torch.nn.MultiheadAttention``'s ``key_padding_mask`` means the opposite (True = ignore); convert with
:func:`from_key_padding_mask`, in tests and adapters only.
"""

from __future__ import annotations

import torch
from torch import Tensor


def padding(ids: Tensor, pad_id: int) -> Tensor:
    """Which keys are real tokens.

    Shapes: ids (batch, k_len) -> (batch, 1, 1, k_len); True where ``ids != pad_id``.
    """
    return (ids != pad_id)[:, None, None, :]


def none_if_all_allowed(may_attend: Tensor) -> Tensor | None:
    """None where the mask allows every key (a batch without padding), else the mask itself.

    Attention without a mask is faster, and a stack checks once instead of once per layer. On a CPU
    only: on an accelerator the check would make the host wait for the device, so the mask is kept.
    """
    if may_attend.device.type == "cpu" and bool(may_attend.all()):
        return None
    return may_attend


def causal(q_len: int, k_len: int | None = None, device: torch.device | None = None) -> Tensor:
    """Which keys each query may see when it must not look ahead (decoder self-attention).

    The triangle is aligned to the bottom right: the last query is position ``k_len - 1``, so with a
    key/value cache holding ``k_len - q_len`` earlier positions, query i sits at position
    ``k_len - q_len + i`` and sees keys ``0 .. k_len - q_len + i``. (``is_causal=True`` in torch aligns
    to the top left instead, which is wrong with a cache.)

    Shapes: -> (q_len, k_len), broadcastable to (batch, heads, q_len, k_len).
    """
    k_len = q_len if k_len is None else k_len
    if k_len < q_len:
        raise ValueError(f"causal mask needs k_len >= q_len, got q_len={q_len}, k_len={k_len}")
    query_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]  # (q_len, 1)
    key_pos = torch.arange(k_len, device=device)[None, :]  # (1, k_len)
    return key_pos <= query_pos


def from_key_padding_mask(key_padding_mask: Tensor) -> Tensor:
    """Convert torch.nn.MultiheadAttention's key_padding_mask (True = ignore) to qkv's convention.

    Shapes: (batch, k_len) -> (batch, 1, 1, k_len), True = may attend.
    """
    return (~key_padding_mask.bool())[:, None, None, :]


def to_key_padding_mask(may_attend: Tensor) -> Tensor:
    """The inverse of :func:`from_key_padding_mask`: (batch, 1, 1, k_len) -> (batch, k_len), True = ignore."""
    return ~may_attend[:, 0, 0, :]
