"""The non-autoregressive Transformer (NAT): choose the length, then predict every target position at once.

    source ids -> embed * sqrt(d) + positions -> N encoder layers                 -> memory
    memory     -> sum over real source tokens -> linear -> length offset logits   (Gu et al., 2018)
    target ids -> embed * sqrt(d) + positions -> N decoder layers (self-attn with padding masks only,
       ([MASK] where unknown)                    cross-attn to memory, FFN)        -> logits

This is the conditional masked language model of Mask-Predict (Ghazvininejad et al., 2019): the decoder
reads the target with some tokens replaced by [MASK] and predicts those, every position seeing every other
(no causal triangle; padding is the only thing masked). Single-pass decoding feeds [MASK] at every
position; mask-predict (:mod:`qkv.decode.nat`) re-masks the least confident tokens and predicts again.

The length is chosen by one of two methods (``config.length_method``):

* ``"classifier"``: the length predictor classifies the offset ``tgt_len - src_len`` (``src_len`` counts
  the source's real tokens, </s> included; ``tgt_len`` the target tokens, no </s>: the output has no end
  token) into ``2 * max_length_offset + 1`` classes;
* ``"cut"``: the decoder is given ``src_len + max_length_offset`` positions (:func:`length_bounds`), is
  trained to write the sentence, then </s> at every position after it, and the output is cut at the
  first </s>. There is no length predictor.

The layers are :mod:`qkv.nn`'s, the same as the autoregressive
model's; parameter names match :class:`~qkv.models.seq2seq.Transformer` where the parts are the same.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qkv.config import NATConfig
from qkv.models.seq2seq import Decoded, Encoded, EncoderDecoder
from qkv.nn import masks
from qkv.nn.attention import KeyMask


def length_classes(tgt_lengths: Tensor, src_lengths: Tensor, max_offset: int) -> Tensor:
    """The length predictor's class of each target length: its offset from the source length, clipped to
    [-max_offset, max_offset], plus max_offset.

    Shapes: tgt_lengths, src_lengths (batch,) -> (batch,) long in [0, 2 * max_offset].
    """
    return (tgt_lengths - src_lengths).clamp(-max_offset, max_offset) + max_offset


def length_bounds(src_lengths: Tensor, max_offset: int, max_positions: int) -> Tensor:
    """The positions the ``"cut"`` length method gives the decoder: ``src_len + max_offset``, at most
    ``max_positions``. Shapes: src_lengths (batch,) -> (batch,) long."""
    return (src_lengths + max_offset).clamp(1, max_positions)


class NATransformer(EncoderDecoder):
    """Encoder, length predictor (``length_method="classifier"`` only) and a decoder without the causal
    mask (a conditional masked LM)."""

    config: NATConfig

    def __init__(self, config: NATConfig) -> None:
        super().__init__(config)
        self.length_proj: nn.Linear | None = (
            nn.Linear(config.d_model, 2 * config.max_length_offset + 1)
            if config.length_method == "classifier"
            else None
        )

    # -- length predictor (the encoder is EncoderDecoder.encode) -----------------------------------
    def length_logits(self, encoded: Encoded) -> Tensor:
        """Logits over the length offsets -K .. K (K = max_length_offset), from the sum of the encoder
        output over the real source tokens.

        A sum, not fairseq's mean: the offset is itself a sum of per-word contributions (a word that
        translates into two adds one, a particle with no translation takes one away), which a linear
        layer reads off a sum but not off a mean (dividing by the length hides the count).

        Shapes: memory (batch, src_len, d_model) -> (batch, 2K + 1); class k is offset k - K.
        ValueError for a model without a length predictor (``length_method="cut"``).
        """
        if self.length_proj is None:
            raise ValueError(
                f"this NAT has no length predictor: its length method is {self.config.length_method!r}"
            )
        is_real = encoded.may_attend[:, 0, 0, :, None].to(encoded.memory.dtype)  # (batch, src_len, 1)
        pooled = (encoded.memory * is_real).sum(dim=1)  # (batch, d_model)
        return self.length_proj(pooled)  # type: ignore[no-any-return]

    def length_bounds(self, src_lengths: Tensor) -> Tensor:
        """The ``"cut"`` method's positions per sentence (:func:`length_bounds`). Shapes: (batch,) -> (batch,)."""
        c = self.config
        return length_bounds(src_lengths, c.max_length_offset, c.max_positions)

    def lengths_of_classes(self, classes: Tensor, src_lengths: Tensor) -> Tensor:
        """Target lengths of length classes, at least 1 and at most max_positions.

        Shapes: classes (batch, n), src_lengths (batch,) -> (batch, n) long.
        """
        lengths = src_lengths[:, None] + classes - self.config.max_length_offset
        return lengths.clamp(1, self.config.max_positions)

    def source_lengths(self, src_ids: Tensor) -> Tensor:
        """Real (non-pad) source tokens per sentence, </s> included. Shapes: (batch, src_len) -> (batch,)."""
        return (src_ids != self.config.pad_id).sum(dim=1)

    # -- decoder ---------------------------------------------------------------------------------
    def decode(
        self, tgt_ids: Tensor, encoded: Encoded, *, need_weights: bool = False, fused: bool = True
    ) -> Decoded:
        """Predict every target position at once from a partly masked target.

        ``tgt_ids`` holds known tokens, ``config.mask_id`` where the token is to be predicted and
        ``pad_id`` after each sentence's end. Every real position attends to every real position; padded
        ones are never attended to (their own outputs are meaningless and must be ignored).

        Shapes: tgt_ids (batch, tgt_len) -> Decoded(logits (batch, tgt_len, tgt_vocab), cache None,
        self/cross weights per layer (batch, heads, tgt_len, tgt_len / src_len) when asked for).
        """
        # (batch, 1, 1, tgt_len): no triangle; None (on a CPU) where nothing is padded
        self_may_attend = KeyMask.of(masks.padding(tgt_ids, self.config.pad_id))  # once for the stack
        memory_may_attend = KeyMask.of(encoded.may_attend)
        x = self.dropout(self.tgt_embed(tgt_ids) + self.positions(tgt_ids.shape[1]))
        self_weights: list[Tensor] | None = [] if need_weights else None
        cross_weights: list[Tensor] | None = [] if need_weights else None
        for layer in self.decoder:
            x, sw, cw = layer(
                x, encoded.memory, self_may_attend, memory_may_attend, need_weights=need_weights, fused=fused
            )
            if self_weights is not None and cross_weights is not None and sw is not None and cw is not None:
                self_weights.append(sw)
                cross_weights.append(cw)
        if self.decoder_norm is not None:
            x = self.decoder_norm(x)
        return Decoded(self.logits(x), None, self_weights, cross_weights)

    def forward(self, src_ids: Tensor, tgt_in_ids: Tensor) -> tuple[Tensor, Tensor | None]:
        """Training: token logits for a masked target, and the length logits (None without a length
        predictor).

        Shapes: src_ids (batch, src_len), tgt_in_ids (batch, tgt_len) with [MASK]s and padding ->
        (token logits (batch, tgt_len, tgt_vocab), length logits (batch, 2K + 1)).
        """
        encoded = self.encode(src_ids)
        lengths = self.length_logits(encoded) if self.length_proj is not None else None
        return self.decode(tgt_in_ids, encoded).logits, lengths

    @torch.no_grad()
    def summary(self) -> str:
        c = self.config
        return (
            f"NATransformer (non-autoregressive, mask-predict): {c.encoder_layers}+{c.decoder_layers} layers, "
            f"d_model {c.d_model}, {c.heads} heads of {c.d_head}, d_ff {c.d_ff}, "
            f"vocab {c.src_vocab_size}/{c.tgt_vocab_size}, "
            + (
                f"length offsets +-{c.max_length_offset}, "
                if c.length_method == "classifier"
                else f"lengths cut at </s> within source + {c.max_length_offset}, "
            )
            + f"{'pre' if c.norm_first else 'post'}-LN, {self.num_parameters():,} parameters"
        )
