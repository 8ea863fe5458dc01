"""Encoder and decoder layers (section 3.1): sublayers wrapped in residual connections and LayerNorm.

Post-LN (the paper, ``norm_first=False``):  x = LayerNorm(x + Dropout(Sublayer(x)))
Pre-LN (``norm_first=True``):                x = x + Dropout(Sublayer(LayerNorm(x)))
A pre-LN stack needs one more LayerNorm after its last layer; the models add it.

The layers are written once, as functions over a :class:`LayerOps` (the layer's products, norms and
attention kernel): :func:`encoder_layer`, :func:`decoder_layer` and the three blocks they are made of.
:class:`EncoderLayer` and :class:`DecoderLayer` hold the parameters and run these functions with their
modules (training, heat maps); :mod:`qkv.infer` runs the same functions with weights prepared once for
inference (packed, int8).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from qkv.config import Activation
from qkv.nn.attention import (
    NO_MASK,
    Kernel,
    KeyMask,
    MultiHeadAttention,
    Product,
    cached_memory_keys_values,
    cross_attention,
    self_attention,
    split_heads,
    stacked_product,
)
from qkv.nn.cache import LayerCache
from qkv.nn.dropout import Dropout
from qkv.nn.feedforward import FeedForward, feed_forward

Norm = Callable[[Tensor], Tensor]
"""LayerNorm over the last dimension. Shapes: (..., d_model) -> (..., d_model)."""


@dataclass(frozen=True, slots=True, eq=False)
class LayerOps:
    """What one layer computes with. Products are ``x -> x W^T + b``; ``self_qkv`` is W_Q, W_K, W_V side by
    side and ``cross_kv`` W_K, W_V of cross-attention (None in an encoder layer, as the other ``cross_``
    fields). ``dropout`` applies to each sublayer's output and ``ffn_dropout`` inside the FFN (training)."""

    heads: int
    norm_first: bool
    activation: Activation
    kernel: Kernel
    self_qkv: Product
    self_out: Product
    norm_self: Norm
    fc_in: Product
    fc_out: Product
    norm_ffn: Norm
    cross_q: Product | None = None
    cross_kv: Product | None = None
    cross_out: Product | None = None
    norm_cross: Norm | None = None
    dropout: Callable[[Tensor], Tensor] | None = None
    ffn_dropout: Callable[[Tensor], Tensor] | None = None


def _add_norm(ops: LayerOps, x: Tensor, out: Tensor, norm: Norm) -> Tensor:
    """The residual after a sublayer: x + Dropout(out), normalised in post-LN (pre-LN normalised the
    sublayer's input instead). ``out`` is the sublayer's fresh output, so the sum is made in place."""
    if ops.dropout is not None:
        out = ops.dropout(out)
    out = out.add_(x)
    return out if ops.norm_first else norm(out)


def self_attention_block(
    ops: LayerOps, x: Tensor, mask: KeyMask, cache: LayerCache | None = None
) -> tuple[Tensor, Tensor | None]:
    """x with its self-attention sublayer, Add & Norm. Shapes: (batch, len, d_model) -> the same,
    weights (batch, heads, len, k_len) or None."""
    h = ops.norm_self(x) if ops.norm_first else x
    out, weights = self_attention(h, ops.self_qkv, ops.self_out, ops.heads, mask, ops.kernel, cache)
    return _add_norm(ops, x, out, ops.norm_self), weights


def _cross(ops: LayerOps) -> tuple[Product, Product, Product, Norm]:
    if ops.cross_q is None or ops.cross_kv is None or ops.cross_out is None or ops.norm_cross is None:
        raise TypeError("an encoder layer has no cross-attention")
    return ops.cross_q, ops.cross_kv, ops.cross_out, ops.norm_cross


def cross_queries(ops: LayerOps, x: Tensor) -> Tensor:
    """The cross-attention queries of x (the self-attention block's output).
    Shapes: (batch, len, d_model) -> (batch, heads, len, d_head)."""
    project_q, _, _, norm = _cross(ops)
    return split_heads(project_q(norm(x) if ops.norm_first else x), ops.heads)


def cross_attention_block(
    ops: LayerOps,
    x: Tensor,
    keys_values: tuple[Tensor, Tensor],
    mask: KeyMask,
    *,
    queries: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """x with its cross-attention sublayer over the encoder's keys and values, Add & Norm. ``queries``:
    :func:`cross_queries` of x, where the caller has them already.
    Shapes: x (batch, len, d_model); keys_values (batch, heads, src_len, d_head) each -> like x."""
    project_q, _, project_out, norm = _cross(ops)
    h = x if queries is not None or not ops.norm_first else norm(x)
    out, weights = cross_attention(
        h, project_q, keys_values, project_out, ops.heads, mask, ops.kernel, queries=queries
    )
    return _add_norm(ops, x, out, norm), weights


def ffn_block(ops: LayerOps, x: Tensor) -> Tensor:
    """x with its feed-forward sublayer, Add & Norm. Shapes: (..., d_model) -> the same."""
    h = ops.norm_ffn(x) if ops.norm_first else x
    out = feed_forward(h, ops.fc_in, ops.fc_out, ops.activation, ops.ffn_dropout)
    return _add_norm(ops, x, out, ops.norm_ffn)


def encoder_layer(ops: LayerOps, x: Tensor, mask: KeyMask) -> tuple[Tensor, Tensor | None]:
    """Self-attention, then the FFN. Shapes: x (batch, src_len, d_model) -> the same, self-attention
    weights (batch, heads, src_len, src_len) or None."""
    x, weights = self_attention_block(ops, x, mask)
    return ffn_block(ops, x), weights


def decoder_layer(
    ops: LayerOps,
    x: Tensor,
    memory: Tensor | None,
    self_mask: KeyMask,
    memory_mask: KeyMask,
    *,
    cache: LayerCache | None = None,
    keys_values: tuple[Tensor, Tensor] | None = None,
    beams: int = 1,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Masked self-attention, cross-attention to the encoder output, then the FFN.

    The cross-attention keys and values come from ``keys_values`` or from ``memory`` (through the
    cache, when there is one). ``beams``: with one new position per row, consecutive groups of
    ``beams`` rows decode one source, whose keys and values are stored once; its beams are then its
    queries, attending together.

    Shapes: x (batch, tgt_len, d_model), with a cache only the new positions; memory (batch or
    batch / beams, src_len, d_model) -> (batch, tgt_len, d_model), self weights (batch, heads, tgt_len,
    k_len) or None, cross weights (batch, heads, tgt_len, src_len) or None.
    """
    x, self_weights = self_attention_block(ops, x, self_mask, cache)
    if keys_values is None:
        if memory is None:
            raise ValueError("a decoder layer needs the encoder output or its keys and values")
        keys_values = cached_memory_keys_values(memory, _cross(ops)[1], ops.heads, cache)
    if beams > 1:
        rows, new, d_model = x.shape
        grouped, cross_weights = cross_attention_block(
            ops, x.view(rows // beams, beams * new, d_model), keys_values, memory_mask
        )
        x = grouped.view(rows, new, d_model)
    else:
        x, cross_weights = cross_attention_block(ops, x, keys_values, memory_mask)
    return ffn_block(ops, x), self_weights, cross_weights


class _Layer(nn.Module):
    """The parameters of both layer modules: self-attention, cross-attention (decoder layers only), the FFN
    and their norms, made in this order (the order random initialisation draws them in)."""

    has_cross_attention: ClassVar[bool] = False

    def __init__(
        self,
        d_model: int,
        heads: int,
        d_ff: int,
        *,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation: Activation = "relu",
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, heads, dropout=attention_dropout)
        self.norm_self_attn = nn.LayerNorm(d_model, eps=layer_norm_eps)
        if self.has_cross_attention:
            self.cross_attn = MultiHeadAttention(d_model, heads, dropout=attention_dropout)
            self.norm_cross_attn = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.ffn = FeedForward(d_model, d_ff, activation=activation, dropout=dropout)
        self.norm_ffn = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout = Dropout(dropout)
        self.norm_first = norm_first

    def ops(self, *, need_weights: bool = False, fused: bool = True) -> LayerOps:
        """This layer's modules as the :class:`LayerOps` the layer functions run on."""
        attn, ffn = self.self_attn, self.ffn
        cross = self.cross_attn if self.has_cross_attention else None
        return LayerOps(
            heads=attn.heads,
            norm_first=self.norm_first,
            activation=ffn.activation,
            kernel=attn.kernel(need_weights=need_weights, fused=fused),
            self_qkv=stacked_product(attn.q_proj, attn.k_proj, attn.v_proj),
            self_out=attn.out_proj,
            norm_self=self.norm_self_attn,
            fc_in=ffn.fc_in,
            fc_out=ffn.fc_out,
            norm_ffn=self.norm_ffn,
            cross_q=None if cross is None else cross.q_proj,
            cross_kv=None if cross is None else stacked_product(cross.k_proj, cross.v_proj),
            cross_out=None if cross is None else cross.out_proj,
            norm_cross=self.norm_cross_attn if self.has_cross_attention else None,
            dropout=self.dropout,
            ffn_dropout=ffn.dropout,
        )


def _key_mask(may_attend: Tensor | KeyMask | None) -> KeyMask:
    if isinstance(may_attend, KeyMask):
        return may_attend
    return NO_MASK if may_attend is None else KeyMask.of(may_attend)


class EncoderLayer(_Layer):
    """Self-attention, then the feed-forward network, each with Add & Norm."""

    has_cross_attention = False

    def forward(
        self,
        x: Tensor,
        may_attend: Tensor | KeyMask | None = None,
        *,
        need_weights: bool = False,
        fused: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        """Shapes: x (batch, src_len, d_model); may_attend (batch, 1, 1, src_len), True = real token.

        -> (batch, src_len, d_model), self-attention weights (batch, heads, src_len, src_len) or None.
        """
        return encoder_layer(self.ops(need_weights=need_weights, fused=fused), x, _key_mask(may_attend))


class DecoderLayer(_Layer):
    """Masked self-attention, cross-attention to the encoder output, then the FFN; each with Add & Norm.

    In cross-attention the queries come from the decoder and the keys and values from the encoder
    output (``memory``), in every decoder layer (section 3.2.3).
    """

    has_cross_attention = True

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        self_may_attend: Tensor | KeyMask | None = None,
        memory_may_attend: Tensor | KeyMask | None = None,
        *,
        cache: LayerCache | None = None,
        need_weights: bool = False,
        fused: bool = True,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """One decoder layer.

        Shapes:
            x: (batch, tgt_len, d_model) — with a cache, only the new positions
            memory: (batch, src_len, d_model), the encoder output
            self_may_attend: broadcastable to (batch, 1, tgt_len, cached + tgt_len); True = may attend
            memory_may_attend: (batch, 1, 1, src_len); True = real source token
            -> (batch, tgt_len, d_model), self weights (batch, heads, tgt_len, cached + tgt_len) or None,
               cross weights (batch, heads, tgt_len, src_len) or None
        """
        return decoder_layer(
            self.ops(need_weights=need_weights, fused=fused),
            x,
            memory,
            _key_mask(self_may_attend),
            _key_mask(memory_may_attend),
            cache=cache,
        )
