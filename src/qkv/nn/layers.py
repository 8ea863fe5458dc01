"""Encoder and decoder layers (section 3.1): sublayers wrapped in residual connections and LayerNorm.

Post-LN (the paper, ``norm_first=False``):  x = LayerNorm(x + Dropout(Sublayer(x)))
Pre-LN (``norm_first=True``):                x = x + Dropout(Sublayer(LayerNorm(x)))
A pre-LN stack needs one more LayerNorm after its last layer; the models add it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from qkv.config import Activation
from qkv.nn.attention import MultiHeadAttention
from qkv.nn.cache import LayerCache
from qkv.nn.dropout import Dropout
from qkv.nn.feedforward import FeedForward


class _Sublayers(nn.Module):
    """Shared plumbing: the Add & Norm around each sublayer."""

    norm_first: bool
    dropout: Dropout

    def add_norm(self, x: Tensor, norm: nn.LayerNorm, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        if self.norm_first:
            return x + self.dropout(sublayer(norm(x)))
        return norm(x + self.dropout(sublayer(x)))


class EncoderLayer(_Sublayers):
    """Self-attention, then the feed-forward network, each with Add & Norm."""

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
        self.ffn = FeedForward(d_model, d_ff, activation=activation, dropout=dropout)
        self.norm_ffn = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout = Dropout(dropout)
        self.norm_first = norm_first

    def forward(
        self, x: Tensor, may_attend: Tensor | None = None, *, need_weights: bool = False, fused: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """Shapes: x (batch, src_len, d_model); may_attend (batch, 1, 1, src_len), True = real token.

        -> (batch, src_len, d_model), self-attention weights (batch, heads, src_len, src_len) or None.
        """
        weights: Tensor | None = None

        def self_attention(h: Tensor) -> Tensor:
            nonlocal weights
            out, weights = self.self_attn(h, None, may_attend, need_weights=need_weights, fused=fused)
            return out

        x = self.add_norm(x, self.norm_self_attn, self_attention)
        x = self.add_norm(x, self.norm_ffn, self.ffn)
        return x, weights


class DecoderLayer(_Sublayers):
    """Masked self-attention, cross-attention to the encoder output, then the FFN; each with Add & Norm.

    In cross-attention the queries come from the decoder and the keys and values from the encoder
    output (``memory``), in every decoder layer (section 3.2.3).
    """

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
        self.cross_attn = MultiHeadAttention(d_model, heads, dropout=attention_dropout)
        self.norm_cross_attn = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.ffn = FeedForward(d_model, d_ff, activation=activation, dropout=dropout)
        self.norm_ffn = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout = Dropout(dropout)
        self.norm_first = norm_first

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        self_may_attend: Tensor | None = None,
        memory_may_attend: Tensor | None = None,
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
        self_weights: Tensor | None = None
        cross_weights: Tensor | None = None

        def self_attention(h: Tensor) -> Tensor:
            nonlocal self_weights
            out, self_weights = self.self_attn(
                h, None, self_may_attend, cache=cache, need_weights=need_weights, fused=fused
            )
            return out

        def cross_attention(h: Tensor) -> Tensor:
            nonlocal cross_weights
            out, cross_weights = self.cross_attn(
                h, memory, memory_may_attend, cache=cache, need_weights=need_weights, fused=fused
            )
            return out

        x = self.add_norm(x, self.norm_self_attn, self_attention)
        x = self.add_norm(x, self.norm_cross_attn, cross_attention)
        x = self.add_norm(x, self.norm_ffn, self.ffn)
        return x, self_weights, cross_weights
