"""A linear map whose weight is stored pre-packed for the CPU's matrix multiply: inference only.

``F.linear`` hands the weight to the BLAS in its plain layout, and the BLAS re-packs it into its blocked
layout on every call. For the small products of a decoding step (a batch of 1-128 rows times a 256-1024
wide weight) that re-packing is a large part of the work: on this project's 2-core Xeon, a (32, 256) x
(256, 8000) product takes 0.73 ms through ``F.linear`` and 0.47 ms with the weight packed once
(``benchmarks/`` has the numbers). :class:`PackedLinear` packs once, with MKL's packed GEMM — the operator
PyTorch's own compiler uses for frozen CPU linears (``torch.ops.mkl._mkl_linear``).

MKL packs for one number of rows (``rows_hint``) and uses the packed copy only for inputs with exactly
that many rows; any other number of rows runs the plain product on the original weight: the same numbers,
without the speed-up. Where MKL's packed GEMM is missing (a build without MKL, a non-x86 CPU) or the
weight is not a float32 CPU tensor, :class:`PackedLinear` computes ``F.linear``.

The weight must not change while a :class:`PackedLinear` is in use (the packed copy would not follow it);
:func:`qkv.decode.fast.fast_decoder` rebuilds its snapshot when a parameter changes. Nothing here has a
gradient.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor


@functools.cache
def mkl_packing_available() -> bool:
    """Whether this torch build can pack a float32 weight for MKL's GEMM (tried once, on a tiny matrix)."""
    if not torch.backends.mkl.is_available():
        return False
    try:
        weight = torch.ones(2, 3)
        packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, 1)
        out = torch.ops.mkl._mkl_linear(torch.ones(1, 3), packed, weight, None, 1)
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return bool(torch.equal(out, torch.full((1, 2), 3.0)))


class PackedLinear:
    """y = x W^T + b, W (out_features, in_features) packed once for x of ``rows_hint`` rows.

    Shapes: x (rows, in_features) -> (rows, out_features); leading dimensions beyond one are allowed
    (their product counts as the rows).
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None, *, rows_hint: int = 1) -> None:
        self.weight = weight.detach()
        self.bias = None if bias is None else bias.detach()
        self.rows_hint = max(int(rows_hint), 1)
        self.packed: Tensor | None = None
        if (
            self.weight.device.type == "cpu"
            and self.weight.dtype == torch.float32
            and (self.bias is None or self.bias.dtype == torch.float32)
            and mkl_packing_available()
        ):
            self.weight = self.weight.contiguous()
            self.packed = torch.ops.mkl._mkl_reorder_linear_weight(self.weight, self.rows_hint)

    def __call__(self, x: Tensor) -> Tensor:
        if self.packed is None or x.dtype != torch.float32 or x.device.type != "cpu":
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkl._mkl_linear(x, self.packed, self.weight, self.bias, self.rows_hint)  # type: ignore[no-any-return]

    @classmethod
    def stacked(cls, linears: list[torch.nn.Linear], *, rows_hint: int = 1) -> PackedLinear:
        """Several linear maps of the same input as one: their outputs side by side, in order.

        E.g. W_Q, W_K, W_V of self-attention -> one (3 d_model, d_model) product instead of three.
        """
        weight = torch.cat([linear.weight.detach() for linear in linears], dim=0)
        biases = [linear.bias for linear in linears]
        if all(b is None for b in biases):
            bias = None
        else:
            bias = torch.cat(
                [
                    b.detach() if b is not None else linear.weight.new_zeros(linear.out_features)
                    for b, linear in zip(biases, linears, strict=True)
                ]
            )
        return cls(weight, bias, rows_hint=rows_hint)
