"""The two ways qkv computes attention, timed at the shapes where ``qkv.nn.attention.products_win`` picks
between them: two batched products and a softmax, or torch's fused kernel
(``scaled_dot_product_attention``).

Each row times both ways, taking turns (best of ``--repeats`` rounds), with a key padding mask, at the
shapes of training (forward and backward over a ~3,072-token batch), of the encoder's pass (forward only)
and of decoding steps (a few queries a sentence against a long cache). The last column says which way
``products_win`` takes there: it should name the faster one, give or take a tie.

    .venv/bin/python benchmarks/attention_kernels.py --threads 2     # about 30 s
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from qkv.nn import attention
from qkv.nn.attention import products_win

HEADS, D_HEAD = 4, 64

# (what, sentences, queries, keys, backward)
SHAPES = [
    *(("training", 3072 // n, n, n, True) for n in (8, 16, 32, 48, 64, 128)),
    *(("pass", 3072 // n, n, n, False) for n in (12, 48, 128)),
    ("one sentence", 1, 12, 12, False),
    ("beam-4 step", 32, 4, 30, False),
    ("beam-4 step", 32, 4, 250, False),
    ("greedy step", 128, 1, 100, False),
]


def products(q: Tensor, k: Tensor, v: Tensor, may_attend: Tensor) -> Tensor:
    return attention._products(q, k, v, may_attend, 0.0)[0]


def fused(q: Tensor, k: Tensor, v: Tensor, may_attend: Tensor) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=may_attend)


KERNELS = {"products": products, "fused": fused}


def call(
    kernel: Callable[..., Tensor], inputs: tuple[Tensor, ...], grad: Tensor | None
) -> Callable[[], object]:
    """One timed call: the kernel on ``inputs``, and its backward pass when ``grad`` is given."""
    if grad is None:
        return lambda: kernel(*inputs)
    return lambda: kernel(*inputs).backward(grad)


def best_ms(ways: dict[str, Callable[[], object]], repeats: int, calls: int) -> dict[str, float]:
    best = dict.fromkeys(ways, float("inf"))
    for _ in range(repeats):
        for name, run in ways.items():
            start = time.perf_counter()
            for _ in range(calls):
                run()
            best[name] = min(best[name], (time.perf_counter() - start) / calls * 1e3)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds, the ways taking turns (default 5)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    print(
        f"{'shape':<14} {'sentences x queries x keys':>27} {'products ms':>12} {'fused ms':>9}  products_win"
    )
    for what, batch, q_len, k_len, backward in SHAPES:
        q = torch.randn(batch, HEADS, q_len, D_HEAD, generator=generator, requires_grad=backward)
        k, v = (
            torch.randn(batch, HEADS, k_len, D_HEAD, generator=generator, requires_grad=backward)
            for _ in "kv"
        )
        lengths = torch.randint((k_len + 1) // 2, k_len + 1, (batch,), generator=generator)
        may_attend = (torch.arange(k_len)[None, :] < lengths[:, None])[:, None, None, :]
        grad = torch.randn(batch, HEADS, q_len, D_HEAD, generator=generator)

        with torch.set_grad_enabled(backward):
            ways = {
                name: call(kernel, (q, k, v, may_attend), grad if backward else None)
                for name, kernel in KERNELS.items()
            }
            times = best_ms(ways, args.repeats, calls=10)
        pick = "products" if products_win(q, k) else "fused"
        size = f"{batch} x {q_len} x {k_len}"
        print(f"{what:<14} {size:>27} {times['products']:>12.3f} {times['fused']:>9.3f}  {pick}")


if __name__ == "__main__":
    main()
