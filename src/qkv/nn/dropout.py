"""Dropout (section 5.4: P_drop = 0.1 on sublayer outputs and on embeddings + positions), fast on CPU.

``torch.nn.Dropout`` draws one random number per element through ``bernoulli_``; on a CPU that can cost
more than the matrix products around it at qkv's sizes. Here one 64-bit draw feeds four elements:
each gets 15 random bits, an element is kept when its bits are >= round(p * 2^15), so p is honoured to
1/32,768, and kept elements are scaled by 1 / (1 - p_effective) so that the expectation is exact. Same
semantics as ``nn.Dropout`` (identity in eval mode or with p = 0), deterministic under ``torch.manual_seed``,
and on other devices it calls ``F.dropout`` (the accelerator's kernel is fast already).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_BITS = 15
_LEVELS = 1 << _BITS  # 32,768 levels per element


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, *, device: torch.device | None = None) -> Tensor:
    """A bool tensor of ``shape``, each element True with probability 1 - round(p * 2^15) / 2^15.

    Four elements share one 64-bit draw: ``random_()`` on int64 gives 63 random bits, viewed as four
    int16 of which the low 15 bits are used.
    """
    numel = 1
    for size in shape:
        numel *= size
    words = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device).random_()
    bits = words.view(torch.int16)[:numel].view(shape).bitwise_and(_LEVELS - 1)  # uniform on [0, 2^15)
    return bits >= round(p * _LEVELS)


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p). Shapes: any -> same."""
    if not training or p == 0.0:
        return x
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if x.device.type != "cpu" or p == 1.0:
        return F.dropout(x, p, training=True)
    threshold = round(p * _LEVELS)
    scale = _LEVELS / (_LEVELS - threshold)  # 1 / (1 - p_effective)
    return x * (keep_mask(x.shape, p) * scale).to(x.dtype)


class Dropout(nn.Module):
    """``nn.Dropout`` with the fast CPU mask of :func:`dropout`."""

    def __init__(self, p: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
