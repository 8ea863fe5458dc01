"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017), figure 1.

    source ids -> embed * sqrt(d) + positions -> N encoder layers                    -> memory
    target ids -> embed * sqrt(d) + positions -> N decoder layers (masked self-attn,
                                                 cross-attn to memory, FFN)           -> logits

Masks are built here from ids and the pad id (True = may attend); batches carry only ids. Marian's models
start decoding from the pad id (``bos_id == pad_id``): :func:`target_may_attend` never masks that start.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.config import ModelConfig
from qkv.nn import masks
from qkv.nn.attention import NO_MASK, KeyMask
from qkv.nn.cache import KVCache
from qkv.nn.dropout import Dropout
from qkv.nn.embedding import TokenEmbedding
from qkv.nn.layers import DecoderLayer, EncoderLayer
from qkv.nn.positional import LearnedPositions, SinusoidalPositions


def target_may_attend(tgt_ids: Tensor, pad_id: int, start_id: int) -> Tensor:
    """Which decoder inputs may be attended to: every one but padding. Position 0 holds the start token and
    is never padding, even when the start token is the pad id (Marian's ``decoder_start_token_id``).

    Shapes: tgt_ids (batch, tgt_len), starting with the start token -> (batch, 1, 1, tgt_len), True = may
    attend.
    """
    may_attend = masks.padding(tgt_ids, pad_id)
    if start_id == pad_id and tgt_ids.shape[1]:
        may_attend[..., 0] = True
    return may_attend


@dataclass
class Encoded:
    """The encoder's result, everything the decoder needs about the source.

    memory: (batch, src_len, d_model); may_attend: (batch, 1, 1, src_len), True = real source token;
    weights: per layer (batch, heads, src_len, src_len) when asked for.
    """

    memory: Tensor
    may_attend: Tensor
    weights: list[Tensor] | None = None

    def select(self, indices: Tensor) -> Encoded:
        """Keep batch rows ``indices`` (beam search repeats each sentence once per beam)."""
        return Encoded(self.memory.index_select(0, indices), self.may_attend.index_select(0, indices))


@dataclass
class Decoded:
    """The decoder's result.

    logits: (batch, tgt_len, tgt_vocab); cache: the updated cache (None if none was passed);
    self_weights / cross_weights: per layer (batch, heads, tgt_len, k_len) when asked for.
    """

    logits: Tensor
    cache: KVCache | None = None
    self_weights: list[Tensor] | None = None
    cross_weights: list[Tensor] | None = None


class EncoderDecoder(nn.Module):
    """What every qkv translation model has: embeddings and positions, the encoder stack and
    :meth:`encode`, a decoder stack, and the (optionally tied) output projection :meth:`logits`.

    :class:`Transformer` decodes left to right (causal mask, KV cache); the non-autoregressive model
    (:class:`qkv.models.nat.NATransformer`) decodes every position at once. Both keep these parameter
    names, so one can start from the other's weights.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.src_embed = TokenEmbedding(c.src_vocab_size, c.d_model, scale=c.scale_embedding, pad_id=c.pad_id)
        self.tgt_embed = (
            self.src_embed
            if c.share_embeddings
            else TokenEmbedding(c.tgt_vocab_size, c.d_model, scale=c.scale_embedding, pad_id=c.pad_id)
        )
        self.positions: SinusoidalPositions | LearnedPositions = (
            SinusoidalPositions(c.d_model, c.max_positions, layout=c.sinusoid_layout)
            if c.positions == "sinusoidal"
            else LearnedPositions(c.d_model, c.max_positions)
        )
        self.dropout = Dropout(c.dropout)  # on embeddings + positions (section 5.4)
        self.encoder = nn.ModuleList(
            [
                EncoderLayer(
                    c.d_model,
                    c.heads,
                    c.d_ff,
                    dropout=c.dropout,
                    attention_dropout=c.attention_dropout,
                    activation=c.activation,
                    norm_first=c.norm_first,
                    layer_norm_eps=c.layer_norm_eps,
                )
                for _ in range(c.encoder_layers)
            ]
        )
        self.decoder = nn.ModuleList(
            [
                DecoderLayer(
                    c.d_model,
                    c.heads,
                    c.d_ff,
                    dropout=c.dropout,
                    attention_dropout=c.attention_dropout,
                    activation=c.activation,
                    norm_first=c.norm_first,
                    layer_norm_eps=c.layer_norm_eps,
                )
                for _ in range(c.decoder_layers)
            ]
        )
        # Pre-LN leaves the residual stream un-normalised after the last layer.
        self.encoder_norm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps) if c.norm_first else None
        self.decoder_norm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps) if c.norm_first else None
        self.output_proj = None if c.tie_output else nn.Linear(c.d_model, c.tgt_vocab_size, bias=False)
        if self.output_proj is not None:
            nn.init.normal_(self.output_proj.weight, std=c.d_model**-0.5)
        # Marian's final_logits_bias: a buffer, as in Hugging Face (fine-tuning leaves it as it is).
        self.output_bias: Tensor | None
        if c.logits_bias:
            self.register_buffer("output_bias", torch.zeros(c.tgt_vocab_size))
        else:
            self.output_bias = None

    # -- encoder ---------------------------------------------------------------------------------
    def encode(self, src_ids: Tensor, *, need_weights: bool = False, fused: bool = True) -> Encoded:
        """Run the encoder stack.

        Shapes: src_ids (batch, src_len) -> Encoded(memory (batch, src_len, d_model), ...).
        """
        may_attend = masks.padding(src_ids, self.config.pad_id)  # (batch, 1, 1, src_len)
        layer_mask = KeyMask.of(may_attend)  # worked out once for the stack
        x = self.src_embed(src_ids) + self.positions(src_ids.shape[1])
        x = self.dropout(x)
        weights: list[Tensor] | None = [] if need_weights else None
        for layer in self.encoder:
            x, w = layer(x, layer_mask, need_weights=need_weights, fused=fused)
            if weights is not None and w is not None:
                weights.append(w)
        if self.encoder_norm is not None:
            x = self.encoder_norm(x)
        return Encoded(x, may_attend, weights)

    def logits(self, x: Tensor) -> Tensor:
        """The pre-softmax projection x W^T (+ the logits bias, where the config has one).
        Shapes: (..., d_model) -> (..., tgt_vocab)."""
        weight = self.output_proj.weight if self.output_proj is not None else self.tgt_embed.weight
        return F.linear(x, weight, self.output_bias)

    def num_parameters(self) -> int:
        """Distinct trainable parameters (a tied matrix counts once)."""
        return sum(p.numel() for p in self.parameters())


class Transformer(EncoderDecoder):
    """The autoregressive encoder-decoder: the decoder reads the target shifted right under a causal
    mask, all positions at once (training) or one new position at a time with a KV cache (decoding)."""

    # -- decoder ---------------------------------------------------------------------------------
    def decode(
        self,
        tgt_ids: Tensor,
        encoded: Encoded,
        *,
        cache: KVCache | None = None,
        need_weights: bool = False,
        fused: bool = True,
        logits_at: Tensor | None = None,
    ) -> Decoded:
        """Run the decoder stack: all target positions at once, or the next ones with a cache.

        Without a cache, ``tgt_ids`` is the whole (shifted-right) target prefix and padding in it is
        masked. With a cache, ``tgt_ids`` holds only the new positions (usually one token) that follow
        the ``cache.length`` positions already decoded; the cache is updated and handed back.

        ``logits_at`` (bool, (batch, tgt_len)) projects only the positions where it is True to the
        vocabulary: training needs no logits at padding, and the projection is the step's largest product.

        Shapes: tgt_ids (batch, tgt_len) -> Decoded(logits (batch, tgt_len, tgt_vocab), ...), or with
        ``logits_at``, logits (positions where True, tgt_vocab) in row-major order.
        """
        new = tgt_ids.shape[1]
        offset = cache.length if cache is not None else 0
        total = offset + new
        if cache is None:
            c = self.config
            self_may_attend: Tensor | None = target_may_attend(tgt_ids, c.pad_id, c.bos_id) & masks.causal(
                new, total, device=tgt_ids.device
            )
        elif new == 1:
            self_may_attend = None  # the newest position may see every earlier one
        else:
            self_may_attend = masks.causal(new, total, device=tgt_ids.device)
        if cache is not None and len(cache.layers) != len(self.decoder):
            raise ValueError(
                f"cache has {len(cache.layers)} layers, the decoder {len(self.decoder)}; "
                f"start with KVCache.empty(model.config.decoder_layers)"
            )

        x = self.tgt_embed(tgt_ids) + self.positions(new, offset)
        x = self.dropout(x)
        self_mask = NO_MASK if self_may_attend is None else KeyMask.of(self_may_attend)
        memory_mask = KeyMask.of(encoded.may_attend)  # both worked out once for the stack
        self_weights: list[Tensor] | None = [] if need_weights else None
        cross_weights: list[Tensor] | None = [] if need_weights else None
        for i, layer in enumerate(self.decoder):
            x, sw, cw = layer(
                x,
                encoded.memory,
                self_mask,
                memory_mask,
                cache=None if cache is None else cache.layers[i],
                need_weights=need_weights,
                fused=fused,
            )
            if self_weights is not None and cross_weights is not None and sw is not None and cw is not None:
                self_weights.append(sw)
                cross_weights.append(cw)
        if logits_at is not None:
            x = x[logits_at]  # (positions, d_model)
        if self.decoder_norm is not None:
            x = self.decoder_norm(x)
        return Decoded(self.logits(x), cache, self_weights, cross_weights)

    def new_cache(self) -> KVCache:
        """An empty key/value cache for incremental decoding."""
        return KVCache.empty(len(self.decoder))

    def forward(self, src_ids: Tensor, tgt_in_ids: Tensor, logits_at: Tensor | None = None) -> Tensor:
        """Teacher forcing: logits for every target position given the gold prefix.

        Shapes: src_ids (batch, src_len), tgt_in_ids (batch, tgt_len) (target shifted right, starting
        with <s>) -> logits (batch, tgt_len, tgt_vocab); with ``logits_at`` (bool, (batch, tgt_len)),
        logits (positions where True, tgt_vocab).
        """
        return self.decode(tgt_in_ids, self.encode(src_ids), logits_at=logits_at).logits

    @torch.no_grad()
    def summary(self) -> str:
        c = self.config
        return (
            f"Transformer: {c.encoder_layers}+{c.decoder_layers} layers, d_model {c.d_model}, "
            f"{c.heads} heads of {c.d_head}, d_ff {c.d_ff}, vocab {c.src_vocab_size}/{c.tgt_vocab_size}, "
            f"{'pre' if c.norm_first else 'post'}-LN, {self.num_parameters():,} parameters"
        )
