"""Independent reference computations for the tests.

Nothing here calls qkv's numeric code: the references are Python loops in float64, closed formulas
evaluated with :mod:`math`, or PyTorch's own ``nn.MultiheadAttention`` / ``nn.Transformer`` with weights
copied across from a qkv module (the copy helpers read qkv's parameters, they do not run qkv).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

# Tolerances, written once. Each comparison below is float32 against an independent computation of the
# same function; the differences are rounding only (summation order, fused kernels), ~1e-7 per operation.
ATTENTION_ATOL = 1e-5  # one attention or MHA layer, float32, values of order 1
MODEL_ATOL = 1e-4  # a whole 2+2-layer model's logits: rounding accumulates over ~20 float32 sublayers


def attention_loop(q: Tensor, k: Tensor, v: Tensor, may_attend: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(d)) v with Python loops over batch, head and query, in float64.

    A query with no allowed key gets a zero context (the convention qkv documents).

    Shapes: q (batch, heads, q_len, d); k, v (batch, heads, k_len, d); may_attend bool, broadcastable to
    (batch, heads, q_len, k_len), True = may attend -> (batch, heads, q_len, d) float64.
    """
    batch, heads, q_len, d = q.shape
    k_len = k.shape[2]
    qs, ks, vs = q.double().tolist(), k.double().tolist(), v.double().tolist()
    if may_attend is None:
        allowed = [[[[True] * k_len] * q_len] * heads] * batch
    else:
        allowed = may_attend.expand(batch, heads, q_len, k_len).tolist()
    out = [[[[0.0] * d for _ in range(q_len)] for _ in range(heads)] for _ in range(batch)]
    for b in range(batch):
        for h in range(heads):
            for i in range(q_len):
                keys = [j for j in range(k_len) if allowed[b][h][i][j]]
                if not keys:
                    continue  # no key to attend to: zero context
                scores = {
                    j: sum(qs[b][h][i][c] * ks[b][h][j][c] for c in range(d)) / math.sqrt(d) for j in keys
                }
                top = max(scores.values())
                exps = {j: math.exp(s - top) for j, s in scores.items()}
                total = sum(exps.values())
                for c in range(d):
                    out[b][h][i][c] = sum(exps[j] / total * vs[b][h][j][c] for j in keys)
    return torch.tensor(out, dtype=torch.float64)


def sinusoid(position: int, dim: int, d_model: int) -> float:
    """The paper's PE(pos, dim) (section 3.5): sin for even dims, cos for odd, wavelength 10000^(2i/d)."""
    two_i = dim - dim % 2
    angle = position / 10000 ** (two_i / d_model)
    return math.sin(angle) if dim % 2 == 0 else math.cos(angle)


def sinusoidal_formula(length: int, d_model: int, offset: int = 0) -> Tensor:
    """The whole table for positions offset .. offset + length - 1, float64. Shapes: -> (length, d_model)."""
    rows = [[sinusoid(pos, dim, d_model) for dim in range(d_model)] for pos in range(offset, offset + length)]
    return torch.tensor(rows, dtype=torch.float64)


@torch.no_grad()
def copy_attention(ours: nn.Module, theirs: nn.MultiheadAttention) -> None:
    """Copy qkv MultiHeadAttention weights (q/k/v/out projections) into torch's packed in_proj."""
    theirs.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
    theirs.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
    theirs.out_proj.weight.copy_(ours.out_proj.weight)
    theirs.out_proj.bias.copy_(ours.out_proj.bias)


@torch.no_grad()
def _copy_linear(ours: nn.Linear, theirs: nn.Linear) -> None:
    theirs.weight.copy_(ours.weight)
    theirs.bias.copy_(ours.bias)


@torch.no_grad()
def _copy_norm(ours: nn.LayerNorm, theirs: nn.LayerNorm) -> None:
    theirs.weight.copy_(ours.weight)
    theirs.bias.copy_(ours.bias)


def copy_encoder_layer(ours: nn.Module, theirs: nn.TransformerEncoderLayer) -> None:
    copy_attention(ours.self_attn, theirs.self_attn)
    _copy_linear(ours.ffn.fc_in, theirs.linear1)
    _copy_linear(ours.ffn.fc_out, theirs.linear2)
    _copy_norm(ours.norm_self_attn, theirs.norm1)
    _copy_norm(ours.norm_ffn, theirs.norm2)


def copy_decoder_layer(ours: nn.Module, theirs: nn.TransformerDecoderLayer) -> None:
    copy_attention(ours.self_attn, theirs.self_attn)
    copy_attention(ours.cross_attn, theirs.multihead_attn)
    _copy_linear(ours.ffn.fc_in, theirs.linear1)
    _copy_linear(ours.ffn.fc_out, theirs.linear2)
    _copy_norm(ours.norm_self_attn, theirs.norm1)
    _copy_norm(ours.norm_cross_attn, theirs.norm2)
    _copy_norm(ours.norm_ffn, theirs.norm3)


def torch_transformer_like(model: nn.Module) -> nn.Transformer:
    """A ``torch.nn.Transformer`` of the same sizes as a qkv seq2seq model, with its weights copied.

    Post-LN: torch always appends a final LayerNorm to each stack; the paper has none, so it is removed.
    Pre-LN: the final norms are kept and take qkv's ``encoder_norm`` / ``decoder_norm``.
    Run it with grad enabled (or ``enable_nested_tensor`` off) so torch takes its plain path, and compare
    only real positions: its inference fast path zeroes padded ones.
    """
    c = model.config
    with warnings.catch_warnings():
        # "enable_nested_tensor is True, but ... norm_first was True": a note about the fast path we avoid.
        warnings.filterwarnings("ignore", message="enable_nested_tensor is True")
        theirs = nn.Transformer(
            d_model=c.d_model,
            nhead=c.heads,
            num_encoder_layers=c.encoder_layers,
            num_decoder_layers=c.decoder_layers,
            dim_feedforward=c.d_ff,
            dropout=0.0,
            activation=c.activation,
            layer_norm_eps=c.layer_norm_eps,
            batch_first=True,
            norm_first=c.norm_first,
        )
    for ours_layer, their_layer in zip(model.encoder, theirs.encoder.layers, strict=True):
        copy_encoder_layer(ours_layer, their_layer)
    for ours_layer, their_layer in zip(model.decoder, theirs.decoder.layers, strict=True):
        copy_decoder_layer(ours_layer, their_layer)
    if c.norm_first:
        _copy_norm(model.encoder_norm, theirs.encoder.norm)
        _copy_norm(model.decoder_norm, theirs.decoder.norm)
    else:
        theirs.encoder.norm = None
        theirs.decoder.norm = None
    return theirs.eval()


def randomize_norms_and_biases(model: nn.Module, generator: torch.Generator) -> None:
    """Give every LayerNorm and every bias random non-zero values, so copying them is really tested.

    (qkv initialises biases to zero and LayerNorms to 1/0; a forgotten copy would go unnoticed.)
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=generator))
            if isinstance(module, (nn.LayerNorm, nn.Linear)) and module.bias is not None:
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
