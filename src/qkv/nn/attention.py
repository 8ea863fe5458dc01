"""Scaled dot-product attention and multi-head attention ("Attention Is All You Need", section 3.2).

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V
    MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W_O,  head_i = Attention(Q W_Q_i, K W_K_i, V W_V_i)

Why divide by sqrt(d_k) (section 3.2.1): if the components of q and k are independent with mean 0 and
variance 1, q . k = sum of d_k products of variance 1, so its variance is d_k (512 at d_k = 512: a standard
deviation of about 23). Scores that far apart make the softmax nearly one-hot: the largest score takes
almost all the weight, and the softmax's gradient, diag(p) - p p^T, is then almost zero, so the queries
and keys stop learning. Dividing by sqrt(d_k) brings the variance back to 1, whatever d_k is.
``tests/nn/test_attention.py`` measures both effects.

This module is the one definition of attention in qkv. :func:`self_attention` and :func:`cross_attention`
are the two attention sublayers, written over *products* (callables ``x -> x W^T + b``) and an attention
*kernel*: :class:`MultiHeadAttention` runs them with its ``nn.Linear`` weights and :func:`attend`
(training, heat maps); :mod:`qkv.infer` runs the very same functions with weights prepared for inference.

The formula is computed one of two ways, picked in one place (:func:`products_win`):
  * two batched products and a softmax (:func:`_products`), which can also return the attention weights
    (heat maps);
  * torch's fused kernel, ``torch.nn.functional.scaled_dot_product_attention`` (less memory, and faster
    on long keys or few query rows).
Masks are bool, True = may attend, broadcastable to (batch, heads, q_len, k_len) (see :mod:`qkv.nn.masks`).
A query whose keys are all masked gets a zero context on both paths (softmax over no keys is undefined;
the explicit formula would give NaN), and in the sublayers whatever the kernel (:class:`KeyMask`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.nn import masks
from qkv.nn.cache import LayerCache
from qkv.nn.dropout import dropout as apply_dropout

Product = Callable[[Tensor], Tensor]
"""A linear map x -> x W^T + b. Shapes: (..., in_features) -> (..., out_features)."""

Kernel = Callable[[Tensor, Tensor, Tensor, Tensor | None], tuple[Tensor, Tensor | None]]
"""(q, k, v, may_attend) -> (context, weights or None): softmax(q k^T / sqrt(d_head)) v, as :func:`attend`."""


# On a CPU, two batched products and a softmax beat torch's fused kernel from 64 query rows (batch x
# queries) on, when the keys are few (<= 48: training's and the encoder's passes over sentences of up to
# 48 tokens, forward and backward) or each sentence has few queries (<= 8: a decoding step, one query per
# sentence or a sentence's beams as one block). With fewer rows, or many queries against long keys, the
# fused kernel wins or ties (docs/inference-backends.md).
PRODUCTS_MIN_ROWS = 64
PRODUCTS_MAX_KEYS = 48
PRODUCTS_MAX_QUERIES = 8


def products_win(q: Tensor, k: Tensor) -> bool:
    """Whether :func:`_products` is the faster way to attend from ``q`` to ``k`` (shapes as :func:`attend`)."""
    batch, _, q_len, _ = q.shape
    return (
        q.device.type == "cpu"
        and batch * q_len >= PRODUCTS_MIN_ROWS
        and (q_len <= PRODUCTS_MAX_QUERIES or k.shape[2] <= PRODUCTS_MAX_KEYS)
    )


def _products(
    q: Tensor, k: Tensor, v: Tensor, may_attend: Tensor | None, dropout: float
) -> tuple[Tensor, Tensor]:
    """softmax(q k^T / sqrt(d_head)) v as two batched products and a softmax -> (context, weights).

    Masked keys get the dtype's lowest value rather than -inf, so a query with no allowed key gets
    uniform weights instead of NaN, in the forward and the backward pass; callers zero its context.
    ``weights`` are before dropout. Shapes as :func:`attend`; k, v may be views (a decoding cache).
    """
    batch, heads, q_len, d_head = q.shape
    k_len = k.shape[2]
    scores = torch.bmm(
        q.reshape(batch * heads, q_len, d_head), k.reshape(batch * heads, k_len, d_head).transpose(1, 2)
    ).mul_(d_head**-0.5)  # (batch * heads, q_len, k_len)
    if may_attend is not None:
        lowest = torch.finfo(scores.dtype).min
        scores.view(batch, heads, q_len, k_len).masked_fill_(~may_attend, lowest)
    weights = torch.softmax(scores, dim=-1)
    kept = apply_dropout(weights, dropout) if dropout > 0.0 else weights
    context = torch.bmm(kept, v.reshape(batch * heads, k_len, d_head))
    return context.view(batch, heads, q_len, d_head), weights.view(batch, heads, q_len, k_len)


def scaled_dot_product(
    q: Tensor, k: Tensor, v: Tensor, may_attend: Tensor | None, *, dropout: float = 0.0
) -> tuple[Tensor, None]:
    """softmax(q k^T / sqrt(d_head)) v by the faster way here (:func:`products_win`), ``dropout`` on the
    weights. A query with no allowed key is left undefined here: the sublayers zero it (:class:`KeyMask`),
    as :func:`attend` does. The kernel of inference (:mod:`qkv.infer`). Shapes as :func:`attend`; k, v may
    be views."""
    if products_win(q, k):
        return _products(q, k, v, may_attend, dropout)[0], None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=may_attend, dropout_p=dropout), None


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

    ``need_weights=True`` or ``fused=False`` takes the products (the fused kernel does not expose the
    weights); otherwise the faster way is taken (:func:`products_win`). ``dropout`` applies to the
    weights (pass 0.0 in eval mode). A query with no allowed key gets zero context and zero weights.
    """
    weights: Tensor | None
    if need_weights or not fused:
        context, weights = _products(q, k, v, may_attend, dropout)
    else:
        if may_attend is not None and may_attend.device.type == "cpu" and bool(may_attend.all()):
            may_attend = None  # nothing is masked: either way is faster without a mask
        context, weights = scaled_dot_product(q, k, v, may_attend, dropout=dropout)
    if may_attend is not None:
        # Kernels differ on rows with no allowed key (some give NaN): make them zero, as documented.
        # On an accelerator the check itself would make the host wait, so the fill always runs there.
        has_key = may_attend.any(dim=-1, keepdim=True)
        if context.device.type != "cpu" or not bool(has_key.all()):
            context = context.masked_fill(~has_key, 0.0)
            weights = None if weights is None else weights.masked_fill(~has_key, 0.0)
    return context, (weights if need_weights else None)


class KeyMask(NamedTuple):
    """A mask worked out once for a whole stack of layers, not once per layer.

    may_attend: bool, broadcastable to (batch, heads, q_len, k_len), True = may attend; None when
    nothing is masked (the kernels are faster without a mask). no_key: (batch, 1, q_len or 1, 1), True
    where a query has no key it may attend to (its context is set to zero); None when every query has one.
    """

    may_attend: Tensor | None
    no_key: Tensor | None

    @classmethod
    def of(cls, may_attend: Tensor | None) -> KeyMask:
        may_attend = None if may_attend is None else masks.none_if_all_allowed(may_attend)
        if may_attend is None:
            return cls(None, None)
        has_key = may_attend.any(dim=-1, keepdim=True)
        # On an accelerator the check would make the host wait: the fill then always runs.
        if may_attend.device.type == "cpu" and bool(has_key.all()):
            return cls(may_attend, None)
        return cls(may_attend, ~has_key)


NO_MASK = KeyMask(None, None)


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(batch, length, d_model) -> (batch, heads, length, d_head), a view."""
    batch, length, d_model = x.shape
    return x.view(batch, length, heads, d_model // heads).transpose(1, 2)


def split_stacked_heads(x: Tensor, parts: int, heads: int) -> tuple[Tensor, ...]:
    """The output of ``parts`` stacked projections (e.g. W_Q, W_K, W_V side by side), as ``parts`` views
    (batch, heads, length, d_head). Shapes: x (batch, length, parts * d_model)."""
    batch, length, width = x.shape
    split = x.view(batch, length, parts, heads, width // (parts * heads)).permute(2, 0, 3, 1, 4)
    return tuple(split.unbind(0))


def merge_heads(x: Tensor) -> Tensor:
    """(batch, heads, length, d_head) -> (batch, length, heads * d_head): the Concat of section 3.2.2."""
    batch, heads, length, d_head = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * d_head)


def _attend_masked(
    kernel: Kernel, q: Tensor, k: Tensor, v: Tensor, mask: KeyMask
) -> tuple[Tensor, Tensor | None]:
    context, weights = kernel(q, k, v, mask.may_attend)
    if mask.no_key is not None:
        context = context.masked_fill(mask.no_key, 0.0)
    return context, weights


def self_attention(
    h: Tensor,
    project_qkv: Product,
    project_out: Product,
    heads: int,
    mask: KeyMask,
    kernel: Kernel,
    cache: LayerCache | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Self-attention: queries, keys and values all from ``h``; with a cache, the keys and values of
    the new positions are appended to the earlier ones.

    ``project_qkv`` is W_Q, W_K, W_V as one product (their outputs side by side).
    Shapes: h (batch, len, d_model) -> (batch, len, d_model), weights (batch, heads, len, k_len) or None.
    """
    q, k, v = split_stacked_heads(project_qkv(h), 3, heads)  # each (batch, heads, len, d_head)
    if cache is not None:
        k, v = cache.append_self(k, v)  # (batch, heads, cached + len, d_head)
    context, weights = _attend_masked(kernel, q, k, v, mask)
    return project_out(merge_heads(context)), weights


def memory_keys_values(memory: Tensor, project_kv: Product, heads: int) -> tuple[Tensor, Tensor]:
    """Cross-attention's keys and values of the encoder output; ``project_kv`` is W_K, W_V as one product.
    Shapes: memory (batch, src_len, d_model) -> two views (batch, heads, src_len, d_head)."""
    k, v = split_stacked_heads(project_kv(memory), 2, heads)
    return k, v


def cached_memory_keys_values(
    memory: Tensor, project_kv: Product, heads: int, cache: LayerCache | None
) -> tuple[Tensor, Tensor]:
    """:func:`memory_keys_values`, computed on a cache's first step and read from it afterwards (the
    memory does not change while decoding). Kept contiguous: every later step reads them."""
    if cache is not None and cache.cross_k is not None and cache.cross_v is not None:
        return cache.cross_k, cache.cross_v
    k, v = memory_keys_values(memory, project_kv, heads)
    if cache is not None:
        k, v = k.contiguous(), v.contiguous()
        cache.cross_k, cache.cross_v = k, v
    return k, v


def cross_attention(
    h: Tensor,
    project_q: Product,
    keys_values: tuple[Tensor, Tensor],
    project_out: Product,
    heads: int,
    mask: KeyMask,
    kernel: Kernel,
    *,
    queries: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Cross-attention: queries from the decoder's ``h``, keys and values from the encoder output.

    ``queries``: the split queries of ``h``, when the caller has them already.
    Shapes: h (batch, len, d_model); keys_values (batch, heads, src_len, d_head) each
    -> (batch, len, d_model), weights (batch, heads, len, src_len) or None.
    """
    q = split_heads(project_q(h), heads) if queries is None else queries
    context, weights = _attend_masked(kernel, q, *keys_values, mask)
    return project_out(merge_heads(context)), weights


def stack_linears(linears: list[nn.Linear]) -> tuple[Tensor, Tensor | None]:
    """The weight and bias of several linear maps of one input, computed as one: their outputs side by
    side, in order (e.g. W_Q, W_K, W_V -> one (3 d_model, d_model) product). Weight (sum of outs, in).
    Differentiable: gradients reach each map's own parameters."""
    weight = torch.cat([linear.weight for linear in linears], dim=0)
    if all(linear.bias is None for linear in linears):
        return weight, None
    bias = torch.cat(
        [
            linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.out_features)
            for linear in linears
        ]
    )
    return weight, bias


def stacked_product(*linears: nn.Linear) -> Product:
    """The linear maps of one input as one product: their outputs side by side. Without gradients, one
    product of the weights stacked at each call (so it follows every change of the weights); with
    gradients, each map's own product, concatenated: training keeps the numbers (and the bits) of
    separate projections."""

    def product(x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return torch.cat([linear(x) for linear in linears], dim=-1)
        return F.linear(x, *stack_linears(list(linears)))

    return product


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

    def kernel(self, *, need_weights: bool = False, fused: bool = True) -> Kernel:
        """:func:`attend` with this module's dropout (in training mode) and the caller's choices."""
        dropout = self.dropout if self.training else 0.0

        def kernel(
            q: Tensor, k: Tensor, v: Tensor, may_attend: Tensor | None
        ) -> tuple[Tensor, Tensor | None]:
            return attend(q, k, v, may_attend, dropout=dropout, need_weights=need_weights, fused=fused)

        return kernel

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        may_attend: Tensor | KeyMask | None = None,
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
        mask = may_attend if isinstance(may_attend, KeyMask) else KeyMask.of(may_attend)
        kernel = self.kernel(need_weights=need_weights, fused=fused)
        if memory is None:
            qkv = stacked_product(self.q_proj, self.k_proj, self.v_proj)
            return self_attention(x, qkv, self.out_proj, self.heads, mask, kernel, cache)
        kv = stacked_product(self.k_proj, self.v_proj)
        keys_values = cached_memory_keys_values(memory, kv, self.heads, cache)
        return cross_attention(x, self.q_proj, keys_values, self.out_proj, self.heads, mask, kernel)
