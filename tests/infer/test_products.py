"""PackedLinear computes x W^T + b (float64 reference), for any number of rows, with or without MKL."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qkv.infer import products
from qkv.infer.products import (
    Int8Linear,
    OneDNNLinear,
    PackedLinear,
    PlainLinear,
    SplitTransposedLinear,
    TransposedLinear,
    cpu_linear,
    int8_available,
    mkl_packing_available,
    onednn_packing_available,
)
from qkv.nn.attention import stack_linears


def _reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out = x.double() @ weight.double().T
    return out if bias is None else out + bias.double()


@pytest.mark.parametrize("rows", [1, 3, 32, 100])
@pytest.mark.parametrize("with_bias", [True, False])
def test_packed_linear_matches_float64(rows: int, with_bias: bool) -> None:
    generator = torch.Generator().manual_seed(rows)
    weight = torch.randn(48, 40, generator=generator)
    bias = torch.randn(48, generator=generator) if with_bias else None
    linear = PackedLinear(weight, bias, rows_hint=32)
    x = torch.randn(rows, 40, generator=generator)
    torch.testing.assert_close(linear(x).double(), _reference(x, weight, bias), atol=1e-4, rtol=0)
    x3 = torch.randn(2, rows, 40, generator=generator)  # leading dimensions are kept
    assert linear(x3).shape == (2, rows, 48)
    torch.testing.assert_close(linear(x3).double(), _reference(x3, weight, bias), atol=1e-4, rtol=0)


def test_the_packed_copy_is_what_runs_at_the_hinted_rows() -> None:
    """At ``rows_hint`` rows the packed copy computes (it no longer sees the original weight); at other
    row counts the plain product on the original weight does: both give x W^T."""
    if not mkl_packing_available():
        pytest.skip("this torch build has no MKL packed GEMM")
    weight = torch.randn(8, 4)
    original = weight.clone()
    linear = PackedLinear(weight, rows_hint=2)
    weight.add_(1.0)  # what the contract forbids, to see which copy runs
    x2, x3 = torch.randn(2, 4), torch.randn(3, 4)
    torch.testing.assert_close(linear(x2), x2 @ original.T)
    torch.testing.assert_close(linear(x3), x3 @ weight.T)


def test_packing_is_used_where_mkl_has_it() -> None:
    linear = PackedLinear(torch.randn(8, 4))
    assert (linear.packed is not None) == mkl_packing_available()
    if torch.backends.mkl.is_available():  # the x86 CPU build this project pins
        assert linear.packed is not None


def test_without_mkl_packing_it_is_plain_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(products, "mkl_packing_available", lambda: False)
    weight, bias = torch.randn(6, 5), torch.randn(6)
    linear = PackedLinear(weight, bias)
    assert linear.packed is None
    x = torch.randn(3, 5)
    torch.testing.assert_close(linear(x).double(), _reference(x, weight, bias), atol=1e-5, rtol=0)


def test_other_dtypes_are_not_packed() -> None:
    weight = torch.randn(6, 5, dtype=torch.float64)
    linear = PackedLinear(weight)
    assert linear.packed is None
    x = torch.randn(3, 5, dtype=torch.float64)
    torch.testing.assert_close(linear(x), x @ weight.T)


@pytest.mark.parametrize("rows", [1, 7, 33])
@pytest.mark.parametrize("with_bias", [True, False])
def test_onednn_linear_matches_float64_at_any_rows(rows: int, with_bias: bool) -> None:
    generator = torch.Generator().manual_seed(rows)
    weight = torch.randn(300, 40, generator=generator)
    bias = torch.randn(300, generator=generator) if with_bias else None
    linear = OneDNNLinear(weight, bias)
    if torch.backends.mkldnn.is_available():  # the x86 CPU build this project pins
        assert linear.packed is not None and onednn_packing_available()
    for x in (torch.randn(rows, 40, generator=generator), torch.randn(2, rows, 40, generator=generator)):
        out = linear(x)
        assert out.shape == (*x.shape[:-1], 300)
        torch.testing.assert_close(out.double(), _reference(x, weight, bias), atol=1e-4, rtol=0)


def test_onednn_linear_falls_back_where_it_cannot_pack(monkeypatch: pytest.MonkeyPatch) -> None:
    """No oneDNN, another dtype, or an input that wants a gradient: plain ``F.linear``."""
    x = torch.randn(3, 5, dtype=torch.float64)
    weight = torch.randn(6, 5, dtype=torch.float64)
    assert OneDNNLinear(weight).packed is None
    torch.testing.assert_close(OneDNNLinear(weight)(x), x @ weight.T)
    monkeypatch.setattr(products, "onednn_packing_available", lambda: False)
    assert OneDNNLinear(torch.randn(6, 5)).packed is None
    monkeypatch.undo()
    weight32 = torch.randn(6, 5)
    x32 = torch.randn(3, 5, requires_grad=True)
    OneDNNLinear(weight32)(x32).sum().backward()  # through F.linear: the gradient exists
    assert x32.grad is not None
    torch.testing.assert_close(x32.grad, weight32.sum(dim=0).expand(3, 5))


@pytest.mark.parametrize("blocks", [1, 2, 5])
@pytest.mark.parametrize("with_bias", [True, False])
def test_split_transposed_linear_matches_float64_and_the_unsplit_product(
    blocks: int, with_bias: bool
) -> None:
    generator = torch.Generator().manual_seed(blocks)
    weight = torch.randn(50, 24, generator=generator)
    bias = torch.randn(50, generator=generator) if with_bias else None
    linear = SplitTransposedLinear(weight, bias, blocks=blocks)
    assert linear.weight_blocks.shape == (blocks, 24, 50 // blocks)
    unsplit = TransposedLinear(weight, bias)
    for x in (torch.randn(1, 24, generator=generator), torch.randn(2, 9, 24, generator=generator)):
        out = linear(x)
        assert out.shape == (*x.shape[:-1], 50)
        torch.testing.assert_close(out.double(), _reference(x, weight, bias), atol=1e-4, rtol=0)
        torch.testing.assert_close(out, unsplit(x), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="50 outputs do not split into 3 equal blocks"):
        SplitTransposedLinear(weight, bias, blocks=3)


def test_stacked_linears_are_the_outputs_side_by_side() -> None:
    torch.manual_seed(0)
    q, k, v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8, bias=False)
    x = torch.randn(5, 8)
    with torch.no_grad():
        expected = torch.cat([q(x), k(x), v(x)], dim=-1)
        torch.testing.assert_close(
            PackedLinear(*stack_linears([q, k, v]), rows_hint=5)(x), expected, atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("kind", [TransposedLinear, PlainLinear])
@pytest.mark.parametrize("with_bias", [True, False])
def test_transposed_and_plain_linear_match_float64(kind: type, with_bias: bool) -> None:
    generator = torch.Generator().manual_seed(7)
    weight = torch.randn(50, 24, generator=generator)
    bias = torch.randn(50, generator=generator) if with_bias else None
    linear = kind(weight, bias)
    for x in (torch.randn(1, 24, generator=generator), torch.randn(2, 9, 24, generator=generator)):
        out = linear(x)
        assert out.shape == (*x.shape[:-1], 50)
        torch.testing.assert_close(out.double(), _reference(x, weight, bias), atol=1e-4, rtol=0)


CHOICES = [  # (MKL fast here, rows, weight rows of 256 columns, torch threads) -> the kind cpu_linear picks
    (True, 1, 256, 1, PackedLinear),
    (True, 1, 256, 2, PlainLinear),
    (True, 4, 256, 2, PackedLinear),
    (True, 32, 256, 2, PackedLinear),
    (True, None, 256, 2, PlainLinear),
    (True, None, 8000, 2, OneDNNLinear),
    (False, 1, 768, 2, SplitTransposedLinear),
    (False, 1, 767, 2, TransposedLinear),  # no equal blocks
    (False, 1, 768, 1, TransposedLinear),
    (False, 32, 256, 2, PlainLinear),
    (False, 32, 257, 2, OneDNNLinear),
    (False, None, 256, 2, PlainLinear),
    (False, None, 8000, 2, OneDNNLinear),
]


@pytest.mark.parametrize(("mkl_fast", "rows", "out_features", "threads", "kind"), CHOICES)
def test_cpu_linear_picks_by_cpu_and_rows_and_always_computes_the_product(
    mkl_fast: bool,
    rows: int | None,
    out_features: int,
    threads: int,
    kind: type,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(products, "mkl_is_fast_here", lambda: mkl_fast)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    generator = torch.Generator().manual_seed(out_features)
    weight = torch.randn(out_features, 256, generator=generator) * 0.1
    bias = torch.randn(out_features, generator=generator)
    linear = cpu_linear(weight, bias, rows=rows)
    assert isinstance(linear, kind)
    monkeypatch.undo()
    for n in {1, 3, rows or 5}:  # the hinted rows and others
        x = torch.randn(n, 256, generator=generator)
        torch.testing.assert_close(linear(x).double(), _reference(x, weight, bias), atol=1e-4, rtol=0)


def test_mkl_is_fast_on_intel_cpus_only() -> None:
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        intel = "GenuineIntel" in cpuinfo.read()
    assert products.mkl_is_fast_here() == intel


# -- int8 ---------------------------------------------------------------------------------------------
needs_int8 = pytest.mark.skipif(not int8_available(), reason="no fbgemm/x86 int8 kernels in this torch")


@needs_int8
@pytest.mark.parametrize("full_range", [True, False])
def test_int8_linear_is_close_to_float64(full_range: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-row int8 weights, 8-bit (or 7-bit) activations: ~1% (2%) root-mean-square error.

    8-bit activations are only right on a CPU with AVX-512 VNNI: elsewhere fbgemm's products pass through
    saturating 16-bit sums (1.7% error here on an AVX2-only AMD EPYC), which is why qkv uses 7 bits there."""
    if full_range and not products.full_range_activations():
        pytest.skip("this CPU lacks AVX-512 VNNI: qkv never uses 8-bit activations here")
    monkeypatch.setattr(products, "full_range_activations", lambda: full_range)
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(300, 256, generator=generator) * 0.05
    bias = torch.randn(300, generator=generator) * 0.1
    layer = Int8Linear(weight, bias)
    assert layer.reduce_range is not full_range
    x = torch.randn(2, 32, 256, generator=generator)
    expected = _reference(x, weight, bias)
    out = layer(x)
    assert out.shape == (2, 32, 300) and out.dtype == torch.float32
    error = float((out.double() - expected).norm() / expected.norm())
    assert error < (0.015 if full_range else 0.03)
    assert error > 1e-4  # it really is quantised, not a float32 product


@needs_int8
def test_int8_linear_without_bias() -> None:
    weight = torch.eye(8) * 0.5
    x = torch.randn(3, 8)
    torch.testing.assert_close(Int8Linear(weight)(x), x * 0.5, atol=0.02 * float(x.abs().max()), rtol=0)
