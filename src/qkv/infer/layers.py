"""A trained layer's weights prepared once for inference: the :class:`~qkv.nn.layers.LayerOps` that the one
layer definition (:mod:`qkv.nn.layers`) runs on, with the products of :mod:`qkv.infer.products`, LayerNorm
as the bare operator, and the attention kernel of the pass: no module calls, no dropout, no gradients.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.infer.products import product
from qkv.nn.attention import stack_linears
from qkv.nn.embedding import TokenEmbedding
from qkv.nn.layers import DecoderLayer, EncoderLayer, LayerOps, Norm

# From this many query rows (batch x queries) on, two batched products and a softmax beat the fused
# kernel for one-token steps (beam search over many sentences); below it the fused kernel wins or ties.
_BMM_MIN_QUERY_ROWS = 64


def fused_kernel(q: Tensor, k: Tensor, v: Tensor, may_attend: Tensor | None) -> tuple[Tensor, None]:
    """softmax(q k^T / sqrt(d_head)) v by torch's fused kernel. Shapes as :func:`qkv.nn.attention.attend`."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=may_attend), None


def step_kernel(q: Tensor, k: Tensor, v: Tensor, may_attend: Tensor | None) -> tuple[Tensor, None]:
    """The attention of one-token steps: the fused kernel, or for many query rows two batched products
    and a softmax. A query with no allowed key gets NaN from the batched path; the sublayer zeroes it
    (:class:`~qkv.nn.attention.KeyMask`). Shapes as :func:`qkv.nn.attention.attend`; k, v may be views."""
    batch, heads, q_len, d_head = q.shape
    if batch * q_len < _BMM_MIN_QUERY_ROWS:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=may_attend), None
    k_len = k.shape[2]
    scores = torch.bmm(
        q.reshape(batch * heads, q_len, d_head), k.reshape(batch * heads, k_len, d_head).transpose(1, 2)
    ).mul_(d_head**-0.5)  # (batch * heads, q_len, k_len)
    if may_attend is not None:
        scores.view(batch, heads, q_len, k_len).masked_fill_(~may_attend, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.bmm(probs, v.reshape(batch * heads, k_len, d_head)).view(batch, heads, q_len, d_head), None


def frozen_norm(module: nn.LayerNorm) -> Norm:
    """LayerNorm with the module's weights, as the bare operator (no module call, no argument checks)."""
    return functools.partial(
        torch.layer_norm,
        normalized_shape=module.normalized_shape,
        weight=module.weight.detach(),
        bias=module.bias.detach(),
        eps=module.eps,
    )


def frozen_layer(
    layer: EncoderLayer | DecoderLayer,
    *,
    step: bool = False,
    rows: int | None = None,
    int8: bool = False,
    many_rows: bool = False,
) -> LayerOps:
    """The layer's :class:`LayerOps` for inference. ``step``: for one-token steps (their kernel); ``rows``,
    ``int8``, ``many_rows``: how each product is prepared (:func:`qkv.infer.products.product`)."""

    def prepared(*linears: nn.Linear) -> object:
        weight, bias = (
            stack_linears(list(linears)) if len(linears) > 1 else (linears[0].weight, linears[0].bias)
        )
        return product(weight, bias, int8=int8, rows=rows, many_rows=many_rows)

    attn, ffn = layer.self_attn, layer.ffn
    cross = layer.cross_attn if isinstance(layer, DecoderLayer) else None
    with torch.no_grad():
        return LayerOps(
            heads=attn.heads,
            norm_first=layer.norm_first,
            activation=ffn.activation,
            kernel=step_kernel if step else fused_kernel,
            self_qkv=prepared(attn.q_proj, attn.k_proj, attn.v_proj),  # type: ignore[arg-type]
            self_out=prepared(attn.out_proj),  # type: ignore[arg-type]
            norm_self=frozen_norm(layer.norm_self_attn),
            fc_in=prepared(ffn.fc_in),  # type: ignore[arg-type]
            fc_out=prepared(ffn.fc_out),  # type: ignore[arg-type]
            norm_ffn=frozen_norm(layer.norm_ffn),
            cross_q=None if cross is None else prepared(cross.q_proj),  # type: ignore[arg-type]
            cross_kv=None if cross is None else prepared(cross.k_proj, cross.v_proj),  # type: ignore[arg-type]
            cross_out=None if cross is None else prepared(cross.out_proj),  # type: ignore[arg-type]
            norm_cross=None if cross is None else frozen_norm(layer.norm_cross_attn),  # type: ignore[union-attr]
        )


def embed(embedding: TokenEmbedding, ids: Tensor) -> Tensor:
    """What :class:`~qkv.nn.embedding.TokenEmbedding` computes (a lookup, times its multiplier), the same
    operations without the module call; a fresh tensor. Shapes: ids (...) -> (..., d_model)."""
    x = embedding.weight.index_select(0, ids.reshape(-1)).view(*ids.shape, -1)
    return x.mul_(embedding.multiplier) if embedding.multiplier != 1.0 else x
