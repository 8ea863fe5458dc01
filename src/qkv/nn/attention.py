"""Scaled dot-product attention and multi-head attention ("Attention Is All You Need", section 3.2).

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V
    MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W_O,  head_i = Attention(Q W_Q_i, K W_K_i, V W_V_i)

:func:`attend` has two paths that compute the same thing:
  * the explicit path spells the formula out and can return the attention weights (for heat maps);
  * the fused path calls ``torch.nn.functional.scaled_dot_product_attention`` (one kernel, less memory).
Masks are bool, True = may attend, broadcastable to (batch, heads, q_len, k_len) (see :mod:`qkv.nn.masks`).
A query whose keys are all masked gets a zero context on both paths (softmax over no keys is undefined;
the explicit formula would give NaN).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.nn.cache import LayerCache
from qkv.nn.packed import stack_linears


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    may_attend: Tensor | None = None,
    *,
    dropout: float = 0.0,
    need_weights: bool = False,
    fused: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Scaled dot-product attention, softmax(q k^T / sqrt(d_head)) v.

    Shapes:
        q: (batch, heads, q_len, d_head); k, v: (batch, heads, k_len, d_head)
        may_attend: bool, broadcastable to (batch, heads, q_len, k_len); True = may attend
        -> context (batch, heads, q_len, d_head), weights (batch, heads, q_len, k_len) or None

    ``need_weights=True`` takes the explicit path (the fused kernel does not expose the weights);
    otherwise ``fused`` picks the path. ``dropout`` applies to the weights (pass 0.0 in eval mode).
    """
    if not need_weights and fused:
        if may_attend is not None and may_attend.device.type == "cpu" and bool(may_attend.all()):
            # Nothing is masked (a batch without padding, a single sentence): the kernel without a mask
            # is faster, and on a CPU the check costs one pass over the small bool mask.
            may_attend = None
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=may_attend, dropout_p=dropout)
        if may_attend is not None:
            # Kernels differ on rows with no allowed key (some give NaN): make them zero, as documented.
            # The check is cheap (the mask is small); the extra pass over the context runs only if needed.
            # On an accelerator the check itself would make the host wait, so the fill always runs there.
            has_key = may_attend.any(dim=-1, keepdim=True)
            if context.device.type != "cpu" or not bool(has_key.all()):
                context = context.masked_fill(~has_key, 0.0)
        return context, None

    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (batch, heads, q_len, k_len)
    if may_attend is not None:
        scores = scores.masked_fill(~may_attend, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if may_attend is not None:
        # softmax over a row of -inf is NaN; such a query attends to nothing.
        weights = weights.masked_fill(~may_attend.any(dim=-1, keepdim=True), 0.0)
    returned = weights
    if dropout > 0.0:
        weights = F.dropout(weights, p=dropout)
    context = weights @ v  # (batch, heads, q_len, d_head)
    return context, (returned if need_weights else None)


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(batch, length, d_model) -> (batch, heads, length, d_head)."""
    batch, length, d_model = x.shape
    return x.view(batch, length, heads, d_model // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(batch, heads, length, d_head) -> (batch, length, heads * d_head): the Concat of section 3.2.2."""
    batch, heads, length, d_head = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * d_head)


class MultiHeadAttention(nn.Module):
    """h heads of d_model/h dimensions each, with projections W_Q, W_K, W_V and W_O.

    Self-attention: ``mha(x)`` (keys and values from x). Cross-attention: ``mha(x, memory)`` (queries
    from x, keys and values from the encoder output ``memory``).

    With a :class:`~qkv.nn.cache.LayerCache` (incremental decoding), self-attention appends the new
    positions' keys and values to the cache, and cross-attention computes the memory's keys and values
    on the first call and reuses them afterwards.
    """

    def __init__(self, d_model: int, heads: int, *, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model={d_model} must be divisible by heads={heads}")
        self.d_model = d_model
        self.heads = heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(proj.weight)
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)

    def _stacked(self, x: Tensor, projections: tuple[nn.Linear, ...]) -> tuple[Tensor, ...]:
        """Several projections of the same input as one product (inference): W_Q, W_K, W_V of
        self-attention, W_K, W_V of cross-attention; the same numbers as separate products.

        Shapes: x (batch, len, d_model) -> one (batch, len, d_model) per projection.

        The weights are stacked on every call (a copy of a few d_model x d_model matrices): a copy kept
        between calls would go stale, unseen, if a weight were changed through ``.data``.
        """
        weight, bias = stack_linears(list(projections))  # (n d_model, d_model), (n d_model,)
        return F.linear(x, weight, bias).split(self.d_model, dim=-1)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        may_attend: Tensor | None = None,
        *,
        cache: LayerCache | None = None,
        need_weights: bool = False,
        fused: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``x`` to itself (memory=None) or to ``memory``.

        Shapes:
            x: (batch, q_len, d_model); memory: (batch, k_len, d_model)
            may_attend: bool, broadcastable to (batch, heads, q_len, k_len); True = may attend
            -> output (batch, q_len, d_model), weights (batch, heads, q_len, k_len) or None
        """
        if memory is None:  # self-attention
            if torch.is_grad_enabled():
                q, k, v = (split_heads(p(x), self.heads) for p in (self.q_proj, self.k_proj, self.v_proj))
            else:
                # Inference: W_Q, W_K, W_V as one product (3 d_model outputs), the same numbers as
                # three; ~3% faster on BERT-MiniLM's forward here. Training keeps three.
                qkv = self._stacked(x, (self.q_proj, self.k_proj, self.v_proj))
                q, k, v = (split_heads(t, self.heads) for t in qkv)
            # each (batch, heads, q_len, d_head)
            if cache is not None:
                k, v = cache.append_self(k, v)  # (batch, heads, cached + q_len, d_head)
        else:
            q = split_heads(self.q_proj(x), self.heads)
            if cache is not None and cache.cross_k is not None and cache.cross_v is not None:
                k, v = cache.cross_k, cache.cross_v  # the memory does not change while decoding
            elif torch.is_grad_enabled():
                k = split_heads(self.k_proj(memory), self.heads)
                v = split_heads(self.v_proj(memory), self.heads)
            else:  # inference: W_K, W_V as one product
                kv = self._stacked(memory, (self.k_proj, self.v_proj))
                k, v = (split_heads(t, self.heads) for t in kv)
            if cache is not None:
                cache.cross_k, cache.cross_v = k, v
        dropout = self.dropout if self.training else 0.0
        context, weights = attend(
            q, k, v, may_attend, dropout=dropout, need_weights=need_weights, fused=fused
        )
        return self.out_proj(merge_heads(context)), weights
