"""A trained layer's weights prepared once for inference: the :class:`~qkv.nn.layers.LayerOps` that the one
layer definition (:mod:`qkv.nn.layers`) runs on, with the products of :mod:`qkv.infer.products`, LayerNorm
as the bare operator, and the attention kernel of the pass: no module calls, no dropout, no gradients.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from qkv.infer.products import product
from qkv.nn.attention import scaled_dot_product, stack_linears
from qkv.nn.embedding import TokenEmbedding
from qkv.nn.layers import DecoderLayer, EncoderLayer, LayerOps, Norm


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
    rows: int | None = None,
    int8: bool = False,
    many_rows: bool = False,
) -> LayerOps:
    """The layer's :class:`LayerOps` for inference: ``rows``, ``int8``, ``many_rows`` say how each product
    is prepared (:func:`qkv.infer.products.product`); attention is :func:`~qkv.nn.attention.scaled_dot_product`."""

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
            kernel=scaled_dot_product,
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
