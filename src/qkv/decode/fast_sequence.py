"""Whole-sequence passes for CPU inference: the encoder, the non-autoregressive decoder, teacher forcing.

``model.encode`` and the decoders' ``decode`` (the reference, which training and attention heat maps use)
run every layer's modules. At inference on a CPU a pass over one short sentence is bound by those calls
and by small products, not by arithmetic: the NAT's decoder pass over a 10-token sentence took 2.1 ms,
of it 0.6 ms the (10, 256) x (256, 8000) output projection, whose weight the BLAS re-packs on every call.
:class:`FastPasses` computes the same functions for that case (no gradients, no attention weights,
float32 on a CPU, eval mode) with:

* plain functions instead of module calls; W_Q, W_K, W_V of self-attention as one product;
* cross-attention keys and values computed once per batch (:meth:`FastPasses.cross_keys_values`), for
  all decoder layers in one product, and reused by every pass: mask-predict runs the decoder up to K
  times on one encoder output;
* a first pass over [MASK] everywhere without padding starts the first decoder layer from its
  self-attention output and cross-attention queries for that length, computed once and kept: they
  depend on nothing else (``decode_hidden(..., every_token=)``);
* every product prepared once for this CPU (:func:`~qkv.nn.packed.cpu_linear`): on an Intel CPU the
  output projection packed for oneDNN (any row count: 0.62 -> 0.26 ms for that product) and the layers'
  plain; elsewhere every weight larger than 256 x 256 packed for oneDNN (on an AMD EPYC MKL's products of
  those were 1.2-2x slower at 12-128 rows); the output projection applied only where logits are needed;
* each mask checked once per stack, residual adds in place.

With ``int8=True`` every product is an :class:`~qkv.nn.packed.Int8Linear` (int8 weights, activations
quantised per call; ``qkv translate --int8``): these passes multiply dozens of rows at once, so unlike the
one-token decoder step they are bound by arithmetic, and int8 runs their products 1.8x (layers) to 2.3x
(output projection) faster at 36 rows.

Used by :mod:`qkv.decode.nat` (the encoder and every mask-predict pass) and by its teacher rescoring
(a causal pass of the autoregressive model over whole candidates). Tests compare it with the reference
modules (encoder output, logits; post- and pre-LN, GELU, learned positions, padding).

Weights are a snapshot, rebuilt when a parameter changes (see :func:`fast_passes`).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor

from qkv.models.seq2seq import Encoded, EncoderDecoder
from qkv.nn import masks
from qkv.nn.frozen import FrozenLayer, Product, embed, empty_rows, frozen_norm, product
from qkv.nn.layers import DecoderLayer
from qkv.nn.packed import Int8Linear, cpu_linear, int8_available
from qkv.nn.snapshot import model_snapshot

KeysValues = list[tuple[Tensor, Tensor]]  # per decoder layer: (batch, heads, src_len, d_head) each

# First-layer prefixes kept per snapshot (see FastPasses.decode_hidden): 64 lengths of a d_model 512 model
# up to 64 tokens are ~16 MB at most; a sentence's lengths are rarely more than a few dozen distinct ones.
_KEPT_PREFIXES = 64


class FastPasses:
    """An encoder-decoder model's stacks, frozen for whole-sequence inference passes on a CPU.

    ``encode`` is ``model.encode``; ``decode_hidden`` + ``logits`` is the decoder of a
    :class:`~qkv.models.nat.NATransformer` (``causal=False``) or a teacher-forced
    :class:`~qkv.models.seq2seq.Transformer` (``causal=True``), with the logits of chosen positions only.
    """

    def __init__(self, model: EncoderDecoder, *, int8: bool = False) -> None:
        if int8 and not int8_available():
            raise RuntimeError(
                "int8 passes need torch's fbgemm/x86 quantised kernels, which this build lacks"
            )
        # Modules and tensors, not the model: a snapshot must not keep its model alive.
        self.pad_id = model.config.pad_id
        self.src_embed = model.src_embed
        self.tgt_embed = model.tgt_embed
        self.positions = model.positions
        self.encoder = [FrozenLayer(layer, int8=int8) for layer in model.encoder]  # type: ignore[arg-type]
        self.decoder = [FrozenLayer(layer, int8=int8) for layer in model.decoder]  # type: ignore[arg-type]
        self.encoder_norm = None if model.encoder_norm is None else frozen_norm(model.encoder_norm)
        self.decoder_norm = None if model.decoder_norm is None else frozen_norm(model.decoder_norm)
        # Every decoder layer's W_K and W_V of cross-attention side by side: one product of the encoder
        # output for the whole stack (layer 0's keys, its values, layer 1's keys, ...).
        self.heads = model.config.heads
        decoder_layers: list[DecoderLayer] = list(model.decoder)  # type: ignore[arg-type]
        cross_linears = [
            m for layer in decoder_layers for m in (layer.cross_attn.k_proj, layer.cross_attn.v_proj)
        ]
        self.cross_kv = product(*cross_linears, int8=int8) if cross_linears else None
        output = model.output_proj.weight if model.output_proj is not None else model.tgt_embed.weight
        self.output: Product = Int8Linear(output) if int8 else cpu_linear(output)
        self._prefixes: OrderedDict[tuple[int, int], tuple[Tensor, Tensor]] = OrderedDict()

    def encode(self, src_ids: Tensor) -> Encoded:
        """Shapes: src_ids (batch, src_len) -> Encoded(memory (batch, src_len, d_model), may_attend)."""
        may_attend = masks.padding(src_ids, self.pad_id)  # (batch, 1, 1, src_len)
        mask = masks.none_if_all_allowed(may_attend)
        empty = empty_rows(mask)
        x = embed(self.src_embed, src_ids).add_(self.positions(src_ids.shape[1]))
        for layer in self.encoder:
            x = layer(x, mask, empty)
        if self.encoder_norm is not None:
            x = torch.layer_norm(x, (x.shape[-1],), *self.encoder_norm)
        return Encoded(x, may_attend)

    def cross_keys_values(self, memory: Tensor) -> KeysValues:
        """Every decoder layer's cross-attention keys and values, as views of one product.
        Shapes: memory (batch, src_len, d_model) -> per layer two (batch, heads, src_len, d_head)."""
        if self.cross_kv is None:
            return []
        batch, src_len, d_model = memory.shape
        kv = self.cross_kv(memory).view(
            batch, src_len, len(self.decoder), 2, self.heads, d_model // self.heads
        )
        # Views, not contiguous copies: the fused attention kernel reads them as fast (1 x 12 x 128, 4 heads:
        # 12.4 vs 13.2 us a call; 96 sentences: 840 vs 898 us), and the copies cost 13-130 us.
        # (layers, 2, batch, heads, src_len, d_head)
        per_layer = kv.permute(2, 3, 0, 4, 1, 5).unbind(0)
        return [(keys, values) for keys, values in per_layer]

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
        projection. Padding (``pad_id``) is never attended to; ``causal`` adds the triangle.

        ``every_token``: the caller's word that every position of ``tgt_ids`` holds this id (a first
        non-autoregressive pass: [MASK] everywhere). Without padding and without the triangle, the first
        layer's self-attention output and cross-attention queries then depend on the length only: they
        are computed once per length and kept (:data:`_KEPT_PREFIXES` lengths), the same numbers.

        Shapes: tgt_ids (batch, tgt_len); cross from :meth:`cross_keys_values` (one row per target row);
        memory_may_attend (batch, 1, 1, src_len) -> (batch, tgt_len, d_model).
        """
        batch, length = tgt_ids.shape
        self_mask: Tensor | None = masks.padding(tgt_ids, self.pad_id)  # (batch, 1, 1, tgt_len)
        if causal:
            self_mask = self_mask & masks.causal(length, device=tgt_ids.device)  # type: ignore[operator]
        self_mask = masks.none_if_all_allowed(self_mask)  # type: ignore[arg-type]
        memory_mask = masks.none_if_all_allowed(memory_may_attend)
        self_empty, memory_empty = empty_rows(self_mask), empty_rows(memory_mask)
        layers = zip(self.decoder, cross, strict=True)
        if every_token is not None and self_mask is None and not causal and self.decoder:
            x, queries = self._constant_prefix(every_token, length, tgt_ids.device)
            first, keys_values = next(layers)
            x = first.after_cross_attention(
                x.expand(batch, -1, -1),
                queries.expand(batch, -1, -1, -1),
                keys_values,
                memory_mask,
                memory_empty,
            )
            x = first.after_ffn(x)
        else:
            x = embed(self.tgt_embed, tgt_ids).add_(self.positions(length))
        for layer, keys_values in layers:
            x = layer(x, self_mask, self_empty, keys_values, memory_mask, memory_empty)
        if self.decoder_norm is not None:
            x = torch.layer_norm(x, (x.shape[-1],), *self.decoder_norm)
        return x

    def _constant_prefix(self, token: int, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The first decoder layer's self-attention output and cross-attention queries for one row of
        ``length`` copies of ``token``, no padding. Shapes: -> (1, length, d_model), (1, heads, length,
        d_head); never written to (the layer's later sublayers add into fresh tensors)."""
        key = (token, length)
        found = self._prefixes.get(key)
        if found is None:
            ids = torch.full((1, length), token, device=device)
            x = embed(self.tgt_embed, ids).add_(self.positions(length))
            x = self.decoder[0].after_self_attention(x, None, None)
            found = (x, self.decoder[0].cross_queries(x))
            self._prefixes[key] = found
            while len(self._prefixes) > _KEPT_PREFIXES:
                self._prefixes.popitem(last=False)
        else:
            self._prefixes.move_to_end(key)
        return found

    def logits(self, hidden: Tensor) -> Tensor:
        """The vocabulary projection. Shapes: (..., d_model) -> (..., tgt_vocab)."""
        return self.output(hidden)


def fast_passes(model: EncoderDecoder, *, int8: bool = False) -> FastPasses:
    """The model's stacks frozen for whole-sequence passes (int8 or not), built once and reused while its
    weights stay the same (rebuilt after an optimizer step, ``load_state_dict`` or any in-place update; a
    change made through ``.data`` is not seen, as with :func:`qkv.decode.fast.fast_decoder`)."""
    return model_snapshot(model, ("passes", int8), lambda: FastPasses(model, int8=int8))
