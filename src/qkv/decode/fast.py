"""The decoder step for CPU inference: the same computation as ``Transformer.decode``, fewer and faster calls.

A decoding step feeds one new token per row through the decoder stack. ``Transformer.decode`` (the
reference, which training and attention heat maps use) runs every layer's modules; on a CPU a step of a
small model is then bound by dispatch and by small matrix products, not by arithmetic. :class:`FastDecoder`
computes the same function for exactly that case (one new position, a key/value cache, no gradients, no
attention weights, float32 on a CPU) with:

* every weight prepared once for this CPU's fastest product at the batch's number of rows
  (:func:`~qkv.nn.packed.cpu_linear`): on an Intel CPU packed for MKL's GEMM for exactly that many rows
  (other row counts, as greedy search drops finished sentences, get the plain product), elsewhere
  packed for oneDNN (any row count; weights larger than 256 x 256) or, for a single row, transposed for
  the BLAS's matrix-vector product;
* W_Q, W_K, W_V of self-attention as one product, and W_K, W_V of cross-attention as one (computed once
  per sentence, on the first step, as in the reference);
* beam search's beams of one sentence as one block of queries against the sentence's cross-attention keys
  and values, stored once per sentence (:class:`~qkv.decode.step.CachedState` ``beams``);
* plain functions instead of module calls, in-place residual adds, the source mask checked once per step
  instead of once per layer.

With ``int8=True`` every product is an :class:`~qkv.nn.packed.Int8Linear` instead (int8 weights,
activations quantised per call): an approximation, ``qkv translate --int8``.

It reads and writes the same :class:`~qkv.nn.cache.KVCache` as the reference, so the two can be mixed
step by step; tests check them against each other (logits, greedy and beam outputs). Weights are a
snapshot: :func:`fast_decoder` rebuilds the snapshot whenever a parameter of the model has changed
(training, ``load_state_dict``) or moved.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.models.seq2seq import Encoded, Transformer
from qkv.nn import masks
from qkv.nn.cache import KVCache, LayerCache
from qkv.nn.frozen import embed, frozen_norm
from qkv.nn.frozen import empty_rows as rows_without_keys
from qkv.nn.layers import DecoderLayer
from qkv.nn.packed import CpuLinear, Int8Linear, cpu_linear, int8_available, stack_linears
from qkv.nn.snapshot import fast_inference_allowed, model_snapshot

Linear = CpuLinear | Int8Linear


def _linear(weight: Tensor, bias: Tensor | None, *, rows_hint: int, int8: bool) -> Linear:
    return Int8Linear(weight, bias) if int8 else cpu_linear(weight, bias, rows=rows_hint)


# From this many query rows (rows x queries per row) on, two batched products and a softmax beat the
# fused kernel for one-token steps: beam 4 x 32 sentences, self-attention over 128 rows and 16-32 cached
# keys, 203-315 us against 335-480 us (AMD EPYC, 2 threads); at 32 rows or fewer the fused one wins or ties.
_BMM_MIN_QUERY_ROWS = 64


def _attention(q: Tensor, k: Tensor, v: Tensor, may_attend: Tensor | None) -> Tensor:
    """softmax(Q K^T / sqrt(d_head)) V, as ``F.scaled_dot_product_attention`` computes it.

    Shapes: q (batch, heads, q_len, d_head); k, v (batch, heads, k_len, d_head), views allowed (the
    cache's buffers); may_attend None or bool broadcastable to (batch, heads, q_len, k_len), True = may
    attend -> (batch, heads, q_len, d_head). A query with no key it may attend to gets NaN from the
    batched path (zeros from the fused one): the caller zeroes such rows, as it must for the fused path.
    """
    batch, heads, q_len, d_head = q.shape
    if batch * q_len < _BMM_MIN_QUERY_ROWS:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=may_attend)
    k_len = k.shape[2]
    scores = torch.bmm(
        q.reshape(batch * heads, q_len, d_head), k.reshape(batch * heads, k_len, d_head).transpose(1, 2)
    ).mul_(d_head**-0.5)  # (batch * heads, q_len, k_len)
    if may_attend is not None:
        scores.view(batch, heads, q_len, k_len).masked_fill_(~may_attend, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.bmm(probs, v.reshape(batch * heads, k_len, d_head)).view(batch, heads, q_len, d_head)


class _FrozenDecoderLayer:
    """One decoder layer's weights, packed; :meth:`__call__` is the layer on one new position per row."""

    def __init__(self, layer: DecoderLayer, rows_hint: int, *, int8: bool = False) -> None:
        self_attn, cross_attn, ffn = layer.self_attn, layer.cross_attn, layer.ffn
        self.heads = self_attn.heads
        self.d_model = self_attn.d_model
        self.norm_first = layer.norm_first
        self.gelu = ffn.activation == "gelu"
        # int8 pays at every row count here, even 1: a step's weights do not stay in cache between
        # steps, and int8 reads a quarter of the bytes (a single sentence: 955 -> 1,037 tokens/s).

        def linear(*linears: nn.Linear) -> Linear:
            return _linear(*stack_linears(list(linears)), rows_hint=rows_hint, int8=int8)

        self.self_qkv = linear(self_attn.q_proj, self_attn.k_proj, self_attn.v_proj)
        self.self_out = linear(self_attn.out_proj)
        self.cross_q = linear(cross_attn.q_proj)
        self.cross_kv = linear(cross_attn.k_proj, cross_attn.v_proj)  # once per batch, on the memory
        self.cross_out = linear(cross_attn.out_proj)
        self.fc_in = linear(ffn.fc_in)
        self.fc_out = linear(ffn.fc_out)
        self.norms = (
            frozen_norm(layer.norm_self_attn),
            frozen_norm(layer.norm_cross_attn),
            frozen_norm(layer.norm_ffn),
        )

    def __call__(
        self,
        x: Tensor,
        memory: Tensor,
        memory_mask: Tensor | None,
        empty_rows: Tensor | None,
        cache: LayerCache,
    ) -> Tensor:
        """Shapes: x (rows, d_model), the new position of each row, ``rows = sources * beams`` with a
        source's beams consecutive; memory (sources, src_len, d_model); memory_mask None (every key
        allowed) or (sources, 1, 1, src_len); empty_rows None or (sources, 1, 1, 1), True where a source
        has no key -> (rows, d_model).

        Add & Norm around each sublayer as :class:`~qkv.nn.layers.DecoderLayer` does, written out rather
        than through a helper (at one sentence a step is bound by the cost of each call); every
        sublayer returns a fresh tensor, so the residual is added in place.
        """
        (w1, b1, eps1), (w2, b2, eps2), (w3, b3, eps3) = self.norms
        shape = (self.d_model,)
        if self.norm_first:  # x + Sublayer(LayerNorm(x))
            x = self._self_attention(torch.layer_norm(x, shape, w1, b1, eps1), cache).add_(x)
            h = torch.layer_norm(x, shape, w2, b2, eps2)
            x = self._cross_attention(h, memory, memory_mask, empty_rows, cache).add_(x)
            return self._ffn(torch.layer_norm(x, shape, w3, b3, eps3)).add_(x)
        # LayerNorm(x + Sublayer(x))
        x = torch.layer_norm(self._self_attention(x, cache).add_(x), shape, w1, b1, eps1)
        h = self._cross_attention(x, memory, memory_mask, empty_rows, cache).add_(x)
        x = torch.layer_norm(h, shape, w2, b2, eps2)
        return torch.layer_norm(self._ffn(x).add_(x), shape, w3, b3, eps3)

    def _self_attention(self, h: Tensor, cache: LayerCache) -> Tensor:
        rows, heads = h.shape[0], self.heads
        # Q, K, V of each row as views of the one product: (rows, heads, 1, d_head) each.
        q, k, v = self.self_qkv(h).view(rows, 3, heads, 1, self.d_model // heads).unbind(1)
        keys, values = cache.append_self(k, v)  # (rows, heads, steps, d_head)
        # The newest position may see every cached one: no mask (as in the reference).
        context = _attention(q, keys, values, None)  # (rows, heads, 1, d_head)
        return self.self_out(context.reshape(rows, self.d_model))

    def _cross_attention(
        self,
        h: Tensor,
        memory: Tensor,
        memory_mask: Tensor | None,
        empty_rows: Tensor | None,
        cache: LayerCache,
    ) -> Tensor:
        heads, d_head = self.heads, self.d_model // self.heads
        if cache.cross_k is None or cache.cross_v is None:
            sources, src_len, _ = memory.shape
            kv = self.cross_kv(memory).view(sources, src_len, 2, heads, d_head)
            cache.cross_k = kv[:, :, 0].transpose(1, 2).contiguous()  # (sources, heads, src_len, d_head)
            cache.cross_v = kv[:, :, 1].transpose(1, 2).contiguous()
        # The beams of a source are its queries: (sources, heads, beams, d_head) against the source's
        # keys, which are stored once (see CachedState.beams). With one beam this is the usual layout.
        rows, sources = h.shape[0], memory.shape[0]
        q = self.cross_q(h)
        if rows == sources:  # one query per source: (rows, heads, 1, d_head) is a view, no transpose
            context = _attention(q.view(rows, heads, 1, d_head), cache.cross_k, cache.cross_v, memory_mask)
        else:
            q = q.view(sources, rows // sources, heads, d_head).transpose(1, 2)
            context = _attention(q, cache.cross_k, cache.cross_v, memory_mask).transpose(1, 2)
        if empty_rows is not None:  # a source with no key is attended to by nothing (see qkv.nn.attention)
            context = context.masked_fill(empty_rows, 0.0)  # (sources, 1, 1, 1) broadcasts over either layout
        return self.cross_out(context.reshape(rows, self.d_model))

    def _ffn(self, h: Tensor) -> Tensor:
        hidden = self.fc_in(h)  # (rows, d_ff)
        hidden = F.gelu(hidden) if self.gelu else hidden.relu_()
        return self.fc_out(hidden)


class FastDecoder:
    """A :class:`~qkv.models.seq2seq.Transformer`'s decoder, frozen for one-token steps on a CPU.

    ``rows_hint`` is the number of rows the weights are prepared for (:func:`~qkv.nn.packed.cpu_linear`):
    on an Intel CPU products at exactly that many rows run MKL-packed and any other number the plain
    product; elsewhere the choice (one row or more) only sets the speed. The same numbers either way.
    """

    def __init__(self, model: Transformer, rows_hint: int, *, int8: bool = False) -> None:
        if int8 and not int8_available():
            raise RuntimeError(
                "int8 decoding needs torch's fbgemm/x86 quantised kernels, which this torch build lacks"
            )
        # The embedding and position modules, not the model: a snapshot must not keep its model alive.
        self.embed = model.tgt_embed
        self.positions = model.positions
        self.rows_hint = rows_hint
        self.int8 = int8
        self.layers = [
            _FrozenDecoderLayer(layer, rows_hint, int8=int8)  # type: ignore[arg-type]
            for layer in model.decoder
        ]
        self.final_norm = None if model.decoder_norm is None else frozen_norm(model.decoder_norm)
        output = model.output_proj.weight if model.output_proj is not None else model.tgt_embed.weight
        self.output = _linear(output, None, rows_hint=rows_hint, int8=int8)
        self._masks: tuple[Tensor, Tensor | None, Tensor | None] | None = None  # see _source_masks

    def _source_masks(self, may_attend: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """(mask for the kernels or None when nothing is masked, rows with no key or None) for the source
        mask (sources, 1, 1, src_len); worked out once per batch, not at every step (the last one is
        kept: the same tensor object means the same batch)."""
        found = self._masks
        if found is not None and found[0] is may_attend:
            return found[1], found[2]
        memory_mask = masks.none_if_all_allowed(may_attend)  # nothing masked: the faster kernel
        empty = rows_without_keys(memory_mask)  # (sources, 1, 1, 1) or None
        self._masks = (may_attend, memory_mask, empty)
        return memory_mask, empty

    def step(self, tokens: Tensor, encoded: Encoded, cache: KVCache, *, beams: int = 1) -> Tensor:
        """Feed one token per row; return the logits of the next one. The cache is updated in place.

        ``beams`` consecutive rows share one source: ``encoded`` and the cache's cross-attention keys and
        values hold one row per source (see :class:`~qkv.decode.step.CachedState`).

        Shapes: tokens (rows, 1), encoded.memory (rows / beams, src_len, d_model) -> logits (rows, vocab).
        """
        rows = tokens.shape[0]
        if rows != encoded.memory.shape[0] * beams:
            raise ValueError(f"{rows} rows for {encoded.memory.shape[0]} sources of {beams} beams each")
        # The embedding as TokenEmbedding computes it, plus the position, without the module calls.
        x = embed(self.embed, tokens.view(rows)).add_(self.positions(1, cache.length))  # (rows, d_model)
        memory_mask, no_key = self._source_masks(encoded.may_attend)
        for layer, layer_cache in zip(self.layers, cache.layers, strict=True):
            x = layer(x, encoded.memory, memory_mask, no_key, layer_cache)
        if self.final_norm is not None:
            weight, bias, eps = self.final_norm
            x = torch.layer_norm(x, (x.shape[-1],), weight, bias, eps)
        return self.output(x)


def can_use_fast_decoder(model: nn.Module, memory: Tensor) -> bool:
    """Whether the fast CPU paths (:class:`FastDecoder`, :mod:`qkv.decode.fast_sequence`) compute what the
    model's modules would, here and now (:func:`~qkv.nn.snapshot.fast_inference_allowed`: a float32 model
    on a CPU, eval mode, no gradients, no CPU autocast). ``memory``: any activation of the pass."""
    return fast_inference_allowed(model, memory)


def fast_decoder(model: Transformer, rows: int, *, int8: bool = False) -> FastDecoder:
    """The model's decoder packed for ``rows`` rows, built once and reused while the weights stay the
    same (:func:`model_snapshot`).

    A change made through ``.data`` is not seen; after one, decode with
    ``CachedStepper(model, fast=False)`` or a fresh copy of the model.

    MKL's packed product runs only when the rows match the packing; other row counts (greedy search
    drops finished sentences) get the plain product, the same numbers. MKL also packs for the number
    of threads torch has when it packs: a weight packed on one thread and used on two ran 1.3x slower
    here, so the thread count is part of what a snapshot is for.
    """
    key = ("step", rows, torch.get_num_threads(), int8)
    return model_snapshot(model, key, lambda: FastDecoder(model, rows, int8=int8))
