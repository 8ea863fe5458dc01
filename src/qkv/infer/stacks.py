"""An encoder-decoder model's stacks, frozen for CPU inference: whole-sequence passes and one-token steps.

Both run the one layer definition (:func:`~qkv.nn.layers.encoder_layer`, :func:`~qkv.nn.layers.decoder_layer`)
on each layer's weights prepared once (:func:`~qkv.infer.layers.frozen_layer`); what differs is how the
products are prepared and what is computed once and kept:

* :class:`Passes` — the encoder, the non-autoregressive decoder and teacher forcing (a causal pass over
  whole candidates). Products for a number of rows that changes from pass to pass; every decoder layer's
  cross-attention keys and values in one product of the encoder output, reused by every pass
  (mask-predict runs the decoder up to K times on one encoder output); the first layer of a pass over
  [MASK] everywhere starts from its self-attention output and queries for that length, kept per length.
* :class:`StepDecoder` — autoregressive decoding, one new position per row with the key/value cache.
  Products prepared for the batch's number of rows; cross-attention keys and values computed on the
  first step and kept in the cache; a source's beams attend to its keys together (stored once).

Weights are snapshots (:func:`~qkv.infer.snapshot.model_snapshot`), rebuilt when a parameter changes.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor

from qkv.infer.layers import embed, frozen_layer, frozen_norm
from qkv.infer.products import Product, product
from qkv.infer.snapshot import model_snapshot
from qkv.models.seq2seq import Encoded, EncoderDecoder, target_may_attend
from qkv.nn import masks
from qkv.nn.attention import NO_MASK, KeyMask, split_stacked_heads, stack_linears
from qkv.nn.cache import KVCache
from qkv.nn.layers import (
    DecoderLayer,
    cross_attention_block,
    cross_queries,
    decoder_layer,
    encoder_layer,
    ffn_block,
    self_attention_block,
)

KeysValues = list[tuple[Tensor, Tensor]]  # per decoder layer: (batch, heads, src_len, d_head) each

# First-layer prefixes kept per snapshot (see Passes.decode_hidden): a sentence's lengths are rarely more
# than a few dozen distinct ones, and each is small (length x d_model, twice).
_KEPT_PREFIXES = 64


def _output_product(model: EncoderDecoder, *, int8: bool, rows: int | None) -> Product:
    """The vocabulary projection, with the logits bias (Marian's final_logits_bias) as its bias."""
    weight = model.output_proj.weight if model.output_proj is not None else model.tgt_embed.weight
    return product(weight, model.output_bias, int8=int8, rows=rows)


class Passes:
    """The model's stacks for whole-sequence passes. ``encode`` is ``model.encode``; ``decode_hidden`` +
    ``logits`` is the decoder of a :class:`~qkv.models.nat.NATransformer` (``causal=False``) or of a
    teacher-forced :class:`~qkv.models.seq2seq.Transformer` (``causal=True``)."""

    def __init__(self, model: EncoderDecoder, *, int8: bool = False) -> None:
        # Modules and tensors, not the model: a snapshot must not keep its model alive.
        self.pad_id, self.start_id = model.config.pad_id, model.config.bos_id
        self.heads = model.config.heads
        self.src_embed, self.tgt_embed, self.positions = model.src_embed, model.tgt_embed, model.positions
        self.encoder = [frozen_layer(layer, int8=int8) for layer in model.encoder]  # type: ignore[arg-type]
        self.decoder = [frozen_layer(layer, int8=int8) for layer in model.decoder]  # type: ignore[arg-type]
        self.encoder_norm = None if model.encoder_norm is None else frozen_norm(model.encoder_norm)
        self.decoder_norm = None if model.decoder_norm is None else frozen_norm(model.decoder_norm)
        # Every decoder layer's W_K and W_V side by side (layer 0's keys, its values, layer 1's keys, ...).
        decoder_layers: list[DecoderLayer] = list(model.decoder)  # type: ignore[arg-type]
        cross = [m for layer in decoder_layers for m in (layer.cross_attn.k_proj, layer.cross_attn.v_proj)]
        with torch.no_grad():
            self.cross_kv = product(*stack_linears(cross), int8=int8) if cross else None
        self.output = _output_product(model, int8=int8, rows=None)
        self._prefixes: OrderedDict[tuple[int, int], tuple[Tensor, Tensor]] = OrderedDict()

    def encode(self, src_ids: Tensor) -> Encoded:
        """Shapes: src_ids (batch, src_len) -> Encoded(memory (batch, src_len, d_model), may_attend)."""
        may_attend = masks.padding(src_ids, self.pad_id)  # (batch, 1, 1, src_len)
        mask = KeyMask.of(may_attend)
        x = embed(self.src_embed, src_ids).add_(self.positions(src_ids.shape[1]))
        for ops in self.encoder:
            x, _ = encoder_layer(ops, x, mask)
        if self.encoder_norm is not None:
            x = self.encoder_norm(x)
        return Encoded(x, may_attend)

    def cross_keys_values(self, memory: Tensor) -> KeysValues:
        """Every decoder layer's cross-attention keys and values, as views of one product.
        Shapes: memory (batch, src_len, d_model) -> per layer two (batch, heads, src_len, d_head)."""
        if self.cross_kv is None:
            return []
        split = split_stacked_heads(self.cross_kv(memory), 2 * len(self.decoder), self.heads)
        return [(split[2 * i], split[2 * i + 1]) for i in range(len(self.decoder))]

    def decode_hidden(
        self,
        tgt_ids: Tensor,
        cross: KeysValues,
        memory_may_attend: Tensor,
        *,
        causal: bool,
        every_token: int | None = None,
    ) -> Tensor:
        """The decoder stack's output (after the final LayerNorm of a pre-LN model), before the vocabulary
        projection. Padding (``pad_id``) is never attended to; ``causal`` adds the triangle (and the first
        position, the start token, is never taken for padding: Marian starts from the pad id).

        ``every_token``: the caller's word that every position of ``tgt_ids`` holds this id (a first
        non-autoregressive pass: [MASK] everywhere). Without padding and without the triangle, the first
        layer's self-attention output and cross-attention queries then depend on the length only: they
        are computed once per length and kept, the same numbers.

        Shapes: tgt_ids (batch, tgt_len); cross from :meth:`cross_keys_values` (one row per target row);
        memory_may_attend (batch, 1, 1, src_len) -> (batch, tgt_len, d_model).
        """
        batch, length = tgt_ids.shape
        if causal:  # a teacher-forced target: position 0 is the start token, never padding
            may_attend = target_may_attend(tgt_ids, self.pad_id, self.start_id)  # (batch, 1, 1, tgt_len)
            may_attend = may_attend & masks.causal(length, device=tgt_ids.device)
        else:
            may_attend = masks.padding(tgt_ids, self.pad_id)
        self_mask, memory_mask = KeyMask.of(may_attend), KeyMask.of(memory_may_attend)
        layers = zip(self.decoder, cross, strict=True)
        if every_token is not None and self_mask.may_attend is None and not causal and self.decoder:
            x, queries = self._constant_prefix(every_token, length, tgt_ids.device)
            first, keys_values = next(layers)
            x, _ = cross_attention_block(
                first,
                x.expand(batch, -1, -1),
                keys_values,
                memory_mask,
                queries=queries.expand(batch, -1, -1, -1),
            )
            x = ffn_block(first, x)
        else:
            x = embed(self.tgt_embed, tgt_ids).add_(self.positions(length))
        for ops, keys_values in layers:
            x, _, _ = decoder_layer(ops, x, None, self_mask, memory_mask, keys_values=keys_values)
        if self.decoder_norm is not None:
            x = self.decoder_norm(x)
        return x

    def _constant_prefix(self, token: int, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The first decoder layer's self-attention output and cross-attention queries for one row of
        ``length`` copies of ``token``, no padding. Shapes: -> (1, length, d_model), (1, heads, length,
        d_head); never written to (the layer's later blocks add into fresh tensors)."""
        key = (token, length)
        found = self._prefixes.get(key)
        if found is None:
            ids = torch.full((1, length), token, device=device)
            x = embed(self.tgt_embed, ids).add_(self.positions(length))
            x, _ = self_attention_block(self.decoder[0], x, NO_MASK)
            found = (x, cross_queries(self.decoder[0], x))
            self._prefixes[key] = found
            while len(self._prefixes) > _KEPT_PREFIXES:
                self._prefixes.popitem(last=False)
        else:
            self._prefixes.move_to_end(key)
        return found

    def logits(self, hidden: Tensor) -> Tensor:
        """The vocabulary projection. Shapes: (..., d_model) -> (..., tgt_vocab)."""
        return self.output(hidden)


class StepDecoder:
    """A :class:`~qkv.models.seq2seq.Transformer`'s decoder for one-token steps, its products prepared for
    ``rows`` rows (:func:`~qkv.infer.products.cpu_linear`): other row counts compute the same numbers,
    some more slowly. ``int8``: int8 products (weights in int8, activations quantised per call)."""

    def __init__(self, model: EncoderDecoder, rows: int, *, int8: bool = False) -> None:
        self.embed, self.positions = model.tgt_embed, model.positions
        self.rows, self.int8 = rows, int8
        self.layers = [
            frozen_layer(layer, rows=rows, int8=int8)  # type: ignore[arg-type]
            for layer in model.decoder
        ]
        self.final_norm = None if model.decoder_norm is None else frozen_norm(model.decoder_norm)
        self.output = _output_product(model, int8=int8, rows=rows)
        self._memory_mask: tuple[Tensor, KeyMask] | None = None  # see step

    def step(self, tokens: Tensor, encoded: Encoded, cache: KVCache, *, beams: int = 1) -> Tensor:
        """Feed one token per row; return the logits of the next one. The cache is updated in place.

        ``beams`` consecutive rows share one source: ``encoded`` and the cache's cross-attention keys and
        values hold one row per source (see :class:`~qkv.decode.step.CachedState`).

        Shapes: tokens (rows, 1), encoded.memory (rows / beams, src_len, d_model) -> logits (rows, vocab).
        """
        rows = tokens.shape[0]
        if rows != encoded.memory.shape[0] * beams:
            raise ValueError(f"{rows} rows for {encoded.memory.shape[0]} sources of {beams} beams each")
        # The source mask is worked out once per batch (the same tensor object is the same batch).
        kept = self._memory_mask
        if kept is None or kept[0] is not encoded.may_attend:
            kept = self._memory_mask = (encoded.may_attend, KeyMask.of(encoded.may_attend))
        x = embed(self.embed, tokens).add_(self.positions(1, cache.length))  # (rows, 1, d_model)
        for ops, layer_cache in zip(self.layers, cache.layers, strict=True):
            # The newest position may see every cached one: no self-attention mask.
            x, _, _ = decoder_layer(ops, x, encoded.memory, NO_MASK, kept[1], cache=layer_cache, beams=beams)
        x = x.view(rows, -1)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return self.output(x)


def passes(model: EncoderDecoder, *, int8: bool = False) -> Passes:
    """The model's :class:`Passes` (int8 or not), built once and reused while its weights stay the same
    (an optimizer step, ``load_state_dict`` or any in-place update is seen; a change through ``.data`` is not)."""
    return model_snapshot(model, ("passes", int8), lambda: Passes(model, int8=int8))


def step_decoder(model: EncoderDecoder, rows: int, *, int8: bool = False) -> StepDecoder:
    """The model's :class:`StepDecoder` for ``rows`` rows, built once and reused while the weights stay the
    same. MKL packs for the number of threads torch has when it packs, so that is part of the key."""
    key = ("step", rows, torch.get_num_threads(), int8)
    return model_snapshot(model, key, lambda: StepDecoder(model, rows, int8=int8))
