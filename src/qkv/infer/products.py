"""Linear maps for CPU inference, ``x -> x W^T + b`` with the weight prepared once: packed for the BLAS's
matrix multiply, transposed, split across threads, or stored in int8.

``F.linear`` hands the weight to the BLAS in its plain layout, and the BLAS re-packs it on every call; for
the small products of decoding (1-128 rows times a 256-1024 wide weight) that is a large part of the work.
:func:`cpu_linear` picks, per CPU vendor, thread count and number of rows, the layout this CPU multiplies
fastest; every choice computes the same numbers up to rounding. :class:`Int8Linear` stores the weight in
int8 and quantises the input on every call (``qkv translate --int8``), an approximation.
:func:`product` is the one place that picks a product for a weight. The measurements behind each choice
are in ``docs/performance-history.md`` and what ``python -m benchmarks`` prints.

The weight must not change while a product is in use (a packed copy would not follow it);
:func:`qkv.infer.snapshot.model_snapshot` rebuilds products when a parameter changes. Nothing here has a
gradient.
"""

from __future__ import annotations

import functools
import warnings

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


def _float32_on_cpu(weight: Tensor, bias: Tensor | None) -> bool:
    """Whether a weight (and bias) can be packed: float32 tensors on a CPU."""
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and (bias is None or bias.dtype == torch.float32)
    )


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
        if _float32_on_cpu(self.weight, self.bias) and mkl_packing_available():
            self.weight = self.weight.contiguous()
            self.packed = torch.ops.mkl._mkl_reorder_linear_weight(self.weight, self.rows_hint)
            # The operator itself, not ``torch.ops.mkl._mkl_linear``: the lookup and the overload packet
            # cost more than the product itself at one row.
            self._mkl_linear = torch.ops.mkl._mkl_linear.default

    def __call__(self, x: Tensor) -> Tensor:
        if self.packed is None or x.dtype != torch.float32 or x.device.type != "cpu":
            return F.linear(x, self.weight, self.bias)
        return self._mkl_linear(x, self.packed, self.weight, self.bias, self.rows_hint)  # type: ignore[no-any-return]


@functools.cache
def onednn_packing_available() -> bool:
    """Whether this torch build can pack a float32 weight for oneDNN's matrix multiply (tried once)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        weight = torch.ones(2, 3)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        out = torch.ops.mkldnn._linear_pointwise(torch.ones(1, 3), packed, None, "none", [], "")
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return bool(torch.equal(out, torch.full((1, 2), 3.0)))


class OneDNNLinear:
    """y = x W^T + b, W packed once into oneDNN's blocked layout, for any number of rows.

    Unlike MKL's packing (:class:`PackedLinear`), oneDNN's does not depend on the row count, so it suits
    products whose rows change from call to call (a non-autoregressive pass has batch x length rows). It
    has a fixed cost per call, so it pays on large weights only (:func:`cpu_linear` says which). The same
    numbers as ``F.linear``; falls back to it where oneDNN is missing or the input is not a float32 CPU
    tensor.

    Shapes: x (..., in_features) -> (..., out_features).
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        self.weight = weight.detach()
        self.bias = None if bias is None else bias.detach()
        self.packed: Tensor | None = None
        if _float32_on_cpu(self.weight, self.bias) and onednn_packing_available():
            self.weight = self.weight.contiguous()
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, None)
            self._linear = torch.ops.mkldnn._linear_pointwise.default  # the operator (see PackedLinear)

    def __call__(self, x: Tensor) -> Tensor:
        if self.packed is None or x.dtype != torch.float32 or x.device.type != "cpu" or x.requires_grad:
            return F.linear(x, self.weight, self.bias)
        return self._linear(x, self.packed, self.bias, "none", [], "")  # type: ignore[no-any-return]


class PlainLinear:
    """y = x W^T + b through ``F.linear``, the weight as it is. Shapes: (..., in) -> (..., out)."""

    __slots__ = ("bias", "weight")

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        self.weight, self.bias = weight.detach(), None if bias is None else bias.detach()

    def __call__(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


class TransposedLinear:
    """y = b + x (W^T), W^T stored once as a contiguous (in_features, out_features) matrix.

    The BLAS then reads the weight in its non-transposed layout, which streams better for one row (a
    matrix-vector product, bound by reading the weight) on CPUs where MKL does not run its fastest code
    (:func:`mkl_is_fast_here`). The same numbers as ``F.linear`` up to rounding.

    Shapes: x (..., in_features) -> (..., out_features).
    """

    __slots__ = ("bias", "out_features", "weight_t")

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        self.weight_t = weight.detach().t().contiguous()  # (in_features, out_features)
        self.out_features = weight.shape[0]
        self.bias = None if bias is None else bias.detach()

    def __call__(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.weight_t.shape[0])
        out = flat @ self.weight_t if self.bias is None else torch.addmm(self.bias, flat, self.weight_t)
        return out.view(*x.shape[:-1], self.out_features)


class SplitTransposedLinear:
    """y = b + x (W^T) with W^T stored as ``blocks`` column blocks, (blocks, in_features, out / blocks),
    computed as one batched product: each of torch's threads streams its own block.

    For one row on CPUs where the BLAS's own matrix-vector kernels run no faster on two threads than on
    one, ``torch.bmm`` gives each thread one block. More rows (a fallback, not the case it is for) are
    computed from the same blocks and copied into place.

    Shapes: x (..., in_features) -> (..., out_features); ``out_features`` divisible by ``blocks``.
    """

    __slots__ = ("bias_blocks", "blocks", "in_features", "out_features", "weight_blocks")

    def __init__(self, weight: Tensor, bias: Tensor | None = None, *, blocks: int) -> None:
        out_features, in_features = weight.shape
        if blocks < 1 or out_features % blocks:
            raise ValueError(f"{out_features} outputs do not split into {blocks} equal blocks")
        self.blocks, self.in_features, self.out_features = blocks, in_features, out_features
        width = out_features // blocks
        # (in, out) -> (blocks, in, width): block j holds output columns j * width .. (j + 1) * width - 1
        self.weight_blocks = (
            weight.detach().t().reshape(in_features, blocks, width).permute(1, 0, 2).contiguous()
        )
        self.bias_blocks = None if bias is None else bias.detach().reshape(blocks, 1, width).contiguous()

    def __call__(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features)
        rows = flat.shape[0]
        many = flat.expand(self.blocks, rows, self.in_features)
        if self.bias_blocks is None:
            out = torch.bmm(many, self.weight_blocks)  # (blocks, rows, width)
        else:
            out = torch.baddbmm(self.bias_blocks, many, self.weight_blocks)
        if rows != 1:  # block-major -> row-major; one row is already in order
            out = out.transpose(0, 1)
        return out.reshape(*x.shape[:-1], self.out_features)


@functools.cache
def _cpuinfo() -> str:
    """The text of /proc/cpuinfo, read once; empty where there is none (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            return cpuinfo.read()
    except OSError:
        return ""


@functools.cache
def mkl_is_fast_here() -> bool:
    """Whether this CPU is one MKL runs its fast code paths on: MKL picks its kernels by CPU vendor and
    gives Intel's best ones to Intel CPUs only (CTranslate2 uses MKL on Intel CPUs only, for the same
    reason); elsewhere oneDNN's products and the transposed layouts are faster."""
    return "GenuineIntel" in _cpuinfo()


CpuLinear = PackedLinear | OneDNNLinear | TransposedLinear | SplitTransposedLinear | PlainLinear

# Below this many outputs, oneDNN's fixed cost per call outweighs its faster kernel on an Intel CPU.
_ONEDNN_MIN_OUT_FEATURES_ON_INTEL = 4096
# Elsewhere oneDNN pays for weights larger than d_model 256 x 256 (at 12-128 rows; F.linear below).
_ONEDNN_MIN_WEIGHT_ELSEWHERE = 256 * 256 + 1


def cpu_linear(weight: Tensor, bias: Tensor | None = None, *, rows: int | None = None) -> CpuLinear:
    """The fastest float32 product of this weight on this CPU, for inputs of ``rows`` rows (None: the
    number of rows changes from call to call, as in whole-sequence passes). Every choice computes
    x W^T + b, the same numbers up to rounding, at any number of rows; the choice only sets the speed.

    ===============  ==============================  ===========================================
    CPU              ``rows`` fixed                  ``rows=None``
    ===============  ==============================  ===========================================
    Intel            1 row on 2+ threads: plain;     oneDNN if >= 4096 outputs, else plain
                     else MKL packed for ``rows``
    any other        1 row: transposed; on 2+        oneDNN if > 256 x 256 weights, else plain
                     threads split, a block each;
                     else as ->
    ===============  ==============================  ===========================================
    """
    if mkl_is_fast_here():
        if rows == 1 and torch.get_num_threads() > 1:
            return PlainLinear(weight, bias)
        if rows is not None:
            return PackedLinear(weight, bias, rows_hint=rows)
        if weight.shape[0] >= _ONEDNN_MIN_OUT_FEATURES_ON_INTEL:
            return OneDNNLinear(weight, bias)
        return PlainLinear(weight, bias)
    if rows == 1:
        threads = torch.get_num_threads()
        if threads > 1 and weight.shape[0] % threads == 0:
            return SplitTransposedLinear(weight, bias, blocks=threads)
        return TransposedLinear(weight, bias)
    if weight.numel() >= _ONEDNN_MIN_WEIGHT_ELSEWHERE:
        return OneDNNLinear(weight, bias)
    return PlainLinear(weight, bias)


def cpu_linear_many_rows(weight: Tensor, bias: Tensor | None = None) -> CpuLinear:
    """The float32 product of this weight for inputs of hundreds of rows or more (a BERT batch): packed
    once for oneDNN, whose kernels beat the BLAS's plain product at that size on the CPUs of
    docs/inference-backends.md.
    ``F.linear`` where oneDNN is missing."""
    return OneDNNLinear(weight, bias)


# -- int8 ----------------------------------------------------------------------------------------------


@functools.cache
def int8_available() -> bool:
    """Whether torch's fbgemm/x86 int8 dynamic-quantisation kernels run here (tried once, tiny)."""
    if not {"fbgemm", "x86"} & set(torch.backends.quantized.supported_engines):
        return False
    try:
        layer = Int8Linear(torch.eye(4), torch.zeros(4))
        out = layer(torch.ones(1, 4))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return bool(torch.allclose(out, torch.ones(1, 4), atol=0.05))


@functools.cache
def full_range_activations() -> bool:
    """Whether activations may use all 8 bits: on CPUs with AVX-512 VNNI, fbgemm's int8 products
    accumulate in 32 bits; without it they pass through saturating 16-bit sums, and torch's x86 default
    is to quantise activations to 7 bits (``reduce_range``), which costs more BLEU (docs/performance.md)."""
    return "avx512_vnni" in _cpuinfo()


class Int8Linear:
    """y ~ x W^T + b with W in int8 (one scale per output row) and x quantised to 8 bits on every call
    (dynamic quantisation): a quarter of the weight bytes and int8 arithmetic, for CPU inference.

    The kernels are torch's fbgemm ``quantized::linear_dynamic``; activations are quantised per call
    to 8 bits, or to 7 where the CPU lacks AVX-512 VNNI (:func:`full_range_activations`);
    ``qkv evaluate --int8`` shows what it does to BLEU. torch marks its quantised tensor types as deprecated (pytorch issue
    184982); they run in torch 2.13, and :func:`int8_available` says when they do not.

    Shapes: x (..., in_features) -> (..., out_features), float32.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        weight = weight.detach().float().contiguous()
        self.out_features, self.in_features = weight.shape
        scale = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()  # (out,)
        zero = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():  # the deprecation notice of quantised tensors (see above)
            warnings.simplefilter("ignore", UserWarning)
            quantized = torch.quantize_per_channel(weight, scale, zero, 0, torch.qint8)
            bias = None if bias is None else bias.detach().float().contiguous()
            self.packed = torch.ops.quantized.linear_prepack(quantized, bias)
        self.reduce_range = not full_range_activations()
        self._linear = torch.ops.quantized.linear_dynamic.default  # the operator (see PackedLinear)

    def __call__(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features)
        out = self._linear(flat, self.packed, self.reduce_range)
        return out.view(*x.shape[:-1], self.out_features)  # type: ignore[no-any-return]


Product = CpuLinear | Int8Linear


def product(
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    int8: bool = False,
    rows: int | None = None,
    many_rows: bool = False,
) -> Product:
    """The inference product of one weight: int8 with ``int8``; else this CPU's fastest float32 product
    for ``rows`` rows (:func:`cpu_linear`; None: a number that changes from call to call), or with
    ``many_rows`` for hundreds of rows and more (:func:`cpu_linear_many_rows`)."""
    weight = weight.detach()
    bias = None if bias is None else bias.detach()
    if int8:
        if not int8_available():
            raise RuntimeError(
                "int8 inference needs torch's fbgemm/x86 quantised kernels, which this build lacks"
            )
        return Int8Linear(weight, bias)
    return cpu_linear_many_rows(weight, bias) if many_rows else cpu_linear(weight, bias, rows=rows)
