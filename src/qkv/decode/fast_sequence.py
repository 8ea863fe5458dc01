"""Whole-sequence passes for CPU inference: the encoder, the non-autoregressive decoder, teacher forcing.

``model.encode`` and the decoders' ``decode`` (the reference, which training and attention heat maps use)
run every layer's modules. At inference on a CPU a pass over one short sentence is bound by those calls
and by small products, not by arithmetic: the NAT's decoder pass over a 10-token sentence took 2.1 ms,
of it 0.6 ms the (10, 256) x (256, 8000) output projection, whose weight the BLAS re-packs on every call.
:class:`FastPasses` computes the same functions for that case (no gradients, no attention weights,
float32 on a CPU, eval mode) with:

* plain functions instead of module calls; W_Q, W_K, W_V of self-attention as one product;
* cross-attention keys and values computed once per batch (:meth:`FastPasses.cross_keys_values`) and
  reused by every pass: mask-predict runs the decoder up to K times on one encoder output;
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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.decode.fast import model_snapshot
from qkv.models.seq2seq import Encoded, EncoderDecoder
from qkv.nn import masks
from qkv.nn.embedding import TokenEmbedding
from qkv.nn.layers import DecoderLayer, EncoderLayer
from qkv.nn.packed import CpuLinear, Int8Linear, cpu_linear, int8_available, stack_linears

_Norm = tuple[Tensor, Tensor, float]  # LayerNorm weight, bias, eps
KeysValues = list[tuple[Tensor, Tensor]]  # per decoder layer: (batch, heads, src_len, d_head) each


def _norm(module: nn.LayerNorm) -> _Norm:
    return module.weight.detach(), module.bias.detach(), module.eps


_Product = CpuLinear | Int8Linear


def _product(*linears: nn.Linear, int8: bool) -> _Product:
    """One linear map, or several of the same input side by side (:func:`stack_linears`), as this CPU's
    fastest product for a number of rows that changes from pass to pass (:func:`cpu_linear`)."""
    weight, bias = stack_linears(list(linears)) if len(linears) > 1 else (linears[0].weight, linears[0].bias)
    return Int8Linear(weight, bias) if int8 else cpu_linear(weight, bias)


def _embed(embedding: TokenEmbedding, ids: Tensor) -> Tensor:
    """What :class:`~qkv.nn.embedding.TokenEmbedding` computes (a lookup, times its multiplier), the same
    operations without the module call; a fresh tensor. Shapes: ids (batch, len) -> (batch, len, d_model)."""
    x = embedding.weight.index_select(0, ids.reshape(-1)).view(*ids.shape, -1)
    return x.mul_(embedding.multiplier) if embedding.multiplier != 1.0 else x


def _empty_rows(may_attend: Tensor | None) -> Tensor | None:
    """Where a query has no key it may attend to (its context must be zero, as in :mod:`qkv.nn.attention`),
    or None when every query has one. Shapes: (batch, 1, q_len or 1, k_len) -> (batch, 1, q_len or 1, 1)."""
    if may_attend is None:
        return None
    has_key = may_attend.any(dim=-1, keepdim=True)
    return None if bool(has_key.all()) else ~has_key


class _FrozenLayer:
    """One encoder layer (self-attention, FFN) or decoder layer (self-attention, cross-attention, FFN)
    for whole-sequence passes. :meth:`__call__` is the layer's ``forward`` in eval mode."""

    def __init__(self, layer: EncoderLayer | DecoderLayer, *, int8: bool = False) -> None:
        attn = layer.self_attn
        self.heads = attn.heads
        self.d_model = attn.d_model
        self.norm_first = layer.norm_first
        self.gelu = layer.ffn.activation == "gelu"
        self.self_qkv = _product(attn.q_proj, attn.k_proj, attn.v_proj, int8=int8)
        self.self_out = _product(attn.out_proj, int8=int8)
        self.norm_self = _norm(layer.norm_self_attn)
        self.cross: tuple[_Product, _Product, _Product, _Norm] | None = None
        if isinstance(layer, DecoderLayer):
            cross = layer.cross_attn
            self.cross = (
                _product(cross.q_proj, int8=int8),
                _product(cross.k_proj, cross.v_proj, int8=int8),
                _product(cross.out_proj, int8=int8),
                _norm(layer.norm_cross_attn),
            )
        self.fc_in = _product(layer.ffn.fc_in, int8=int8)
        self.fc_out = _product(layer.ffn.fc_out, int8=int8)
        self.norm_ffn = _norm(layer.norm_ffn)

    def cross_keys_values(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values of the encoder output, computed once for every pass.
        Shapes: memory (batch, src_len, d_model) -> two (batch, heads, src_len, d_head)."""
        if self.cross is None:
            raise TypeError("an encoder layer has no cross-attention")
        batch, src_len, _ = memory.shape
        kv = self.cross[1](memory).view(batch, src_len, 2, self.heads, self.d_model // self.heads)
        # Views, not contiguous copies: the fused attention kernel reads them as fast (1 x 12 x 128,
        # 4 heads: 12.4 vs 13.2 us a call; 96 sentences: 840 vs 898 us), and the copies cost 13-130 us.
        keys, values = kv.permute(2, 0, 3, 1, 4).unbind(0)
        return keys, values

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
        (batch, 1, 1, src_len); the ``*_empty`` from :func:`_empty_rows` -> (batch, len, d_model)."""
        h = self._norm_in(x, self.norm_self)
        x = self._add_norm(x, self._self_attention(h, self_mask, self_empty), self.norm_self)
        if self.cross is not None:
            if cross is None:
                raise ValueError("a decoder layer needs the cross-attention keys and values")
            h = self._norm_in(x, self.cross[3])
            x = self._add_norm(x, self._cross_attention(h, cross, memory_mask, memory_empty), self.cross[3])
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

    def _cross_attention(
        self, h: Tensor, cross: tuple[Tensor, Tensor], mask: Tensor | None, empty: Tensor | None
    ) -> Tensor:
        assert self.cross is not None
        (q,) = self._split(self.cross[0](h), 1)
        context = F.scaled_dot_product_attention(q, cross[0], cross[1], attn_mask=mask)
        if empty is not None:
            context = context.masked_fill(empty, 0.0)
        return self.cross[2](self._merge(context))


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
        self.encoder = [_FrozenLayer(layer, int8=int8) for layer in model.encoder]  # type: ignore[arg-type]
        self.decoder = [_FrozenLayer(layer, int8=int8) for layer in model.decoder]  # type: ignore[arg-type]
        self.encoder_norm = None if model.encoder_norm is None else _norm(model.encoder_norm)
        self.decoder_norm = None if model.decoder_norm is None else _norm(model.decoder_norm)
        output = model.output_proj.weight if model.output_proj is not None else model.tgt_embed.weight
        self.output: _Product = Int8Linear(output) if int8 else cpu_linear(output)

    def encode(self, src_ids: Tensor) -> Encoded:
        """Shapes: src_ids (batch, src_len) -> Encoded(memory (batch, src_len, d_model), may_attend)."""
        may_attend = masks.padding(src_ids, self.pad_id)  # (batch, 1, 1, src_len)
        mask = masks.none_if_all_allowed(may_attend)
        empty = _empty_rows(mask)
        x = _embed(self.src_embed, src_ids).add_(self.positions(src_ids.shape[1]))
        for layer in self.encoder:
            x = layer(x, mask, empty)
        if self.encoder_norm is not None:
            x = torch.layer_norm(x, (x.shape[-1],), *self.encoder_norm)
        return Encoded(x, may_attend)

    def cross_keys_values(self, memory: Tensor) -> KeysValues:
        """Every decoder layer's cross-attention keys and values. memory (batch, src_len, d_model)."""
        return [layer.cross_keys_values(memory) for layer in self.decoder]

    def decode_hidden(
        self, tgt_ids: Tensor, cross: KeysValues, memory_may_attend: Tensor, *, causal: bool
    ) -> Tensor:
        """The decoder stack's output (after the final LayerNorm of a pre-LN model), before the vocabulary
        projection. Padding (``pad_id``) is never attended to; ``causal`` adds the triangle.

        Shapes: tgt_ids (batch, tgt_len); cross from :meth:`cross_keys_values` (one row per target row);
        memory_may_attend (batch, 1, 1, src_len) -> (batch, tgt_len, d_model).
        """
        length = tgt_ids.shape[1]
        self_mask: Tensor | None = masks.padding(tgt_ids, self.pad_id)  # (batch, 1, 1, tgt_len)
        if causal:
            self_mask = self_mask & masks.causal(length, device=tgt_ids.device)  # type: ignore[operator]
        self_mask = masks.none_if_all_allowed(self_mask)  # type: ignore[arg-type]
        memory_mask = masks.none_if_all_allowed(memory_may_attend)
        self_empty, memory_empty = _empty_rows(self_mask), _empty_rows(memory_mask)
        x = _embed(self.tgt_embed, tgt_ids).add_(self.positions(length))
        for layer, keys_values in zip(self.decoder, cross, strict=True):
            x = layer(x, self_mask, self_empty, keys_values, memory_mask, memory_empty)
        if self.decoder_norm is not None:
            x = torch.layer_norm(x, (x.shape[-1],), *self.decoder_norm)
        return x

    def logits(self, hidden: Tensor) -> Tensor:
        """The vocabulary projection. Shapes: (..., d_model) -> (..., tgt_vocab)."""
        return self.output(hidden)


def fast_passes(model: EncoderDecoder, *, int8: bool = False) -> FastPasses:
    """The model's stacks frozen for whole-sequence passes (int8 or not), built once and reused while its
    weights stay the same (rebuilt after an optimizer step, ``load_state_dict`` or any in-place update; a
    change made through ``.data`` is not seen, as with :func:`qkv.decode.fast.fast_decoder`)."""
    return model_snapshot(model, ("passes", int8), lambda: FastPasses(model, int8=int8))
