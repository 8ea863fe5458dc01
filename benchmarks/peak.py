"""The machine's peak matrix-multiply rate: the limit every model's FLOP/s is measured against (MFU).

A large square ``torch.mm`` (n x n by n x n, 2 n^3 FLOPs) is about the best case for the BLAS (CPU) or
cuBLAS (GPU) kernels that every system below ends in; float32 on CPU, float32 and bfloat16 on a GPU.
"""

from __future__ import annotations

import torch

from benchmarks.common import Column, Device, Sizes, Table, best_time


def matmul_rate(n: int, dtype: torch.dtype, device: Device, repeats: int) -> float:
    """FLOP/s of the best of ``repeats`` n x n matmuls."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device.torch_device, dtype)
    b = torch.randn(n, n, generator=generator).to(device.torch_device, dtype)
    seconds = best_time(lambda: torch.mm(a, b), device, repeats=repeats)
    return 2 * n**3 / seconds


def run(sizes: Sizes, device: Device) -> tuple[Table, dict[str, float]]:
    """The table and the peak FLOP/s by precision ("float32", and "bf16" on a GPU)."""
    n = sizes.peak_n
    table = Table(
        "peak",
        f"peak matmul rate: torch.mm {n} x {n}, best of {sizes.peak_repeats}, {device.name()}",
        [Column("gflops", "GFLOP/s", "{:,.1f}")],
    )
    peaks = {"float32": matmul_rate(n, torch.float32, device, sizes.peak_repeats)}
    table.rows["torch.mm float32"] = {"gflops": peaks["float32"] / 1e9}
    if device.is_cuda:
        peaks["bf16"] = matmul_rate(n, torch.bfloat16, device, sizes.peak_repeats)
        table.rows["torch.mm bfloat16"] = {"gflops": peaks["bf16"] / 1e9}
    table.notes.append(f"FLOPs = 2 n^3 per matmul; {device.threads} torch threads")
    return table, peaks


def peak_for(peaks: dict[str, float], device: Device) -> float:
    """The peak that MFU divides by: bf16 under autocast on a GPU, float32 otherwise."""
    return peaks["bf16"] if device.is_cuda and "bf16" in peaks else peaks["float32"]
