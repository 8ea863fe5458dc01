"""Layers frozen for whole-sequence inference on a CPU: the same functions as the modules, fewer calls.

``EncoderLayer.forward`` and ``DecoderLayer.forward`` (the reference, which training and attention heat
maps use) run every sublayer's modules. At inference on a CPU that costs: a NAT's decoder pass over one
short sentence is bound by those calls and by small products, a BERT batch by its products.
:class:`FrozenLayer` computes the layer's function in eval mode without gradients (float32, CPU) with
plain functions instead of module calls, W_Q, W_K, W_V as one product, every product prepared once for
this CPU (:mod:`qkv.nn.packed`), each mask checked once per stack and residuals added in place.

Used by :mod:`qkv.decode.fast_sequence` (encoder, non-autoregressive decoder, teacher forcing) and by
:class:`qkv.models.bert.BertModel` (its encoder at inference). Tests compare both with the modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.nn.embedding import TokenEmbedding
from qkv.nn.layers import DecoderLayer, EncoderLayer
from qkv.nn.packed import (
    CpuLinear,
    Int8Linear,
    cpu_linear,
    cpu_linear_many_rows,
    stack_linears,
)

_Norm = tuple[Tensor, Tensor, float]  # LayerNorm weight, bias, eps


def frozen_norm(module: nn.LayerNorm) -> _Norm:
    return module.weight.detach(), module.bias.detach(), module.eps


Product = CpuLinear | Int8Linear


def product(*linears: nn.Linear, int8: bool = False, many_rows: bool = False) -> Product:
    """One linear map, or several of the same input side by side (:func:`stack_linears`), as this CPU's
    fastest product for a number of rows that changes from pass to pass (:func:`cpu_linear`), or, with
    ``many_rows``, for hundreds of rows and more (:func:`cpu_linear_many_rows`); int8 with ``int8``."""
    weight, bias = stack_linears(list(linears)) if len(linears) > 1 else (linears[0].weight, linears[0].bias)
    if int8:
        return Int8Linear(weight, bias)
    return cpu_linear_many_rows(weight, bias) if many_rows else cpu_linear(weight, bias)


def embed(embedding: TokenEmbedding, ids: Tensor) -> Tensor:
    """What :class:`~qkv.nn.embedding.TokenEmbedding` computes (a lookup, times its multiplier), the same
    operations without the module call; a fresh tensor. Shapes: ids (batch, len) -> (batch, len, d_model)."""
    x = embedding.weight.index_select(0, ids.reshape(-1)).view(*ids.shape, -1)
    return x.mul_(embedding.multiplier) if embedding.multiplier != 1.0 else x


def empty_rows(may_attend: Tensor | None) -> Tensor | None:
    """Where a query has no key it may attend to (its context must be zero, as in :mod:`qkv.nn.attention`),
    or None when every query has one. Shapes: (batch, 1, q_len or 1, k_len) -> (batch, 1, q_len or 1, 1)."""
    if may_attend is None:
        return None
    has_key = may_attend.any(dim=-1, keepdim=True)
    return None if bool(has_key.all()) else ~has_key


class FrozenLayer:
    """One encoder layer (self-attention, FFN) or decoder layer (self-attention, cross-attention, FFN)
    for whole-sequence passes. :meth:`__call__` is the layer's ``forward`` in eval mode."""

    def __init__(
        self, layer: EncoderLayer | DecoderLayer, *, int8: bool = False, many_rows: bool = False
    ) -> None:
        attn = layer.self_attn
        self.heads = attn.heads
        self.d_model = attn.d_model
        self.norm_first = layer.norm_first
        self.gelu = layer.ffn.activation == "gelu"
        self.self_qkv = product(attn.q_proj, attn.k_proj, attn.v_proj, int8=int8, many_rows=many_rows)
        self.self_out = product(attn.out_proj, int8=int8, many_rows=many_rows)
        self.norm_self = frozen_norm(layer.norm_self_attn)
        # W_Q and W_O of cross-attention and its norm; W_K and W_V belong to whoever computes the keys and
        # values of the encoder output once for every pass (qkv.decode.fast_sequence: one product for all
        # layers), so they are not kept here.
        self.cross: tuple[Product, Product, _Norm] | None = None
        if isinstance(layer, DecoderLayer):
            cross = layer.cross_attn
            self.cross = (
                product(cross.q_proj, int8=int8, many_rows=many_rows),
                product(cross.out_proj, int8=int8, many_rows=many_rows),
                frozen_norm(layer.norm_cross_attn),
            )
        self.fc_in = product(layer.ffn.fc_in, int8=int8, many_rows=many_rows)
        self.fc_out = product(layer.ffn.fc_out, int8=int8, many_rows=many_rows)
        self.norm_ffn = frozen_norm(layer.norm_ffn)

    def __call__(
        self,
        x: Tensor,
        self_mask: Tensor | None,
        self_empty: Tensor | None,
        cross: tuple[Tensor, Tensor] | None = None,
        memory_mask: Tensor | None = None,
        memory_empty: Tensor | None = None,
    ) -> Tensor:
        """Shapes: x (batch, len, d_model); self_mask None or broadcastable to (batch, 1, len, len);
        cross (keys, values) (batch, heads, src_len, d_head) for a decoder layer; memory_mask None or
        (batch, 1, 1, src_len); the ``*_empty`` from :func:`empty_rows` -> (batch, len, d_model)."""
        x = self.after_self_attention(x, self_mask, self_empty)
        if self.cross is not None:
            if cross is None:
                raise ValueError("a decoder layer needs the cross-attention keys and values")
            x = self.after_cross_attention(x, self.cross_queries(x), cross, memory_mask, memory_empty)
        return self.after_ffn(x)

    # The three sublayers, each with its Add & Norm; __call__ runs them in order. They are separate so
    # that a caller may start a layer from a part it has already computed: the first decoder layer of a
    # non-autoregressive pass over [MASK] everywhere gives the same self-attention output and
    # cross-attention queries for every sentence of a length (qkv.decode.fast_sequence keeps them).
    def after_self_attention(self, x: Tensor, mask: Tensor | None, empty: Tensor | None) -> Tensor:
        """x + SelfAttention(x), normalised as the layer does. Shapes: (batch, len, d_model) -> the same."""
        h = self._norm_in(x, self.norm_self)
        return self._add_norm(x, self._self_attention(h, mask, empty), self.norm_self)

    def cross_queries(self, x: Tensor) -> Tensor:
        """The cross-attention queries of the self-attention sublayer's output x.
        Shapes: (batch, len, d_model) -> (batch, heads, len, d_head)."""
        cross = self._cross()
        (q,) = self._split(cross[0](self._norm_in(x, cross[2])), 1)
        return q

    def after_cross_attention(
        self,
        x: Tensor,
        queries: Tensor,
        cross: tuple[Tensor, Tensor],
        mask: Tensor | None,
        empty: Tensor | None,
    ) -> Tensor:
        """x + CrossAttention(queries of x, encoder keys and values), normalised. ``queries`` from
        :meth:`cross_queries`. Shapes: x (batch, len, d_model), queries (batch, heads, len, d_head)."""
        _, out, norm = self._cross()
        context = F.scaled_dot_product_attention(queries, cross[0], cross[1], attn_mask=mask)
        if empty is not None:
            context = context.masked_fill(empty, 0.0)
        return self._add_norm(x, out(self._merge(context)), norm)

    def _cross(self) -> tuple[Product, Product, _Norm]:
        if self.cross is None:
            raise TypeError("an encoder layer has no cross-attention")
        return self.cross

    def after_ffn(self, x: Tensor) -> Tensor:
        """x + FFN(x), normalised. Shapes: (batch, len, d_model) -> the same."""
        h = self._norm_in(x, self.norm_ffn)
        hidden = self.fc_in(h)  # (batch, len, d_ff)
        hidden = F.gelu(hidden) if self.gelu else hidden.relu_()
        return self._add_norm(x, self.fc_out(hidden), self.norm_ffn)

    # Add & Norm, split around the sublayer: pre-LN normalises its input, post-LN the residual sum.
    # torch.layer_norm, the operator F.layer_norm calls, without the wrapper's checks (they add up over
    # a pass's dozen calls at one sentence).
    def _norm_in(self, x: Tensor, norm: _Norm) -> Tensor:
        return torch.layer_norm(x, (self.d_model,), *norm) if self.norm_first else x

    def _add_norm(self, x: Tensor, out: Tensor, norm: _Norm) -> Tensor:
        """``out`` is the sublayer's fresh output: the residual is added in place."""
        return out.add_(x) if self.norm_first else torch.layer_norm(out.add_(x), (self.d_model,), *norm)

    def _split(self, x: Tensor, parts: int) -> tuple[Tensor, ...]:
        """(batch, len, parts * d_model) -> ``parts`` views (batch, heads, len, d_head)."""
        batch, length, _ = x.shape
        split = x.view(batch, length, parts, self.heads, self.d_model // self.heads).permute(2, 0, 3, 1, 4)
        return tuple(split.unbind(0))

    def _merge(self, context: Tensor) -> Tensor:
        """(batch, heads, len, d_head) -> (batch, len, d_model): the Concat of section 3.2.2."""
        batch, _, length, _ = context.shape
        return context.transpose(1, 2).reshape(batch, length, self.d_model)

    def _self_attention(self, h: Tensor, mask: Tensor | None, empty: Tensor | None) -> Tensor:
        q, k, v = self._split(self.self_qkv(h), 3)
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (batch, heads, len, d_head)
        if empty is not None:
            context = context.masked_fill(empty, 0.0)
        return self.self_out(self._merge(context))
