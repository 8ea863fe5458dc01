"""Positional encodings: the paper's sinusoids (section 3.5) and learned positions (BERT).

    PE(pos, 2i)   = sin(pos / 10000^(2i / d_model))
    PE(pos, 2i+1) = cos(pos / 10000^(2i / d_model))

qkv interleaves sin (even dims) and cos (odd dims) as the paper does (layout ``"interleaved"``); Marian,
fairseq and Hugging Face Marian put every sine in the first half and every cosine in the second (layout
``"halves"``, the same frequencies in another order). A model names its layout in its config
(``ModelConfig.sinusoid_layout``), so an imported Marian model keeps its weights as they are.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qkv.config import SinusoidLayout


def sinusoidal_table(
    length: int,
    d_model: int,
    *,
    offset: int = 0,
    layout: SinusoidLayout = "interleaved",
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
) -> Tensor:
    """The sinusoidal encoding of positions ``offset .. offset + length - 1``.

    ``layout="interleaved"``: sin(pos / 10000^(2i/d)) in dimension 2i and its cosine in 2i+1 (the paper);
    ``"halves"``: the sines in dimensions 0 .. ceil(d/2) - 1, then the cosines (Marian).
    Computed in float64 and then cast, so large positions keep their precision.
    Shapes: -> (length, d_model).
    """
    position = torch.arange(offset, offset + length, dtype=torch.float64, device=device)[:, None]
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64, device=device)  # 2i for each sin/cos pair
    angle = position / torch.pow(10000.0, two_i / d_model)  # (length, ceil(d_model / 2))
    table = torch.empty(length, d_model, dtype=torch.float64, device=device)
    if layout == "halves":
        sines = angle.shape[1]
        table[:, :sines] = torch.sin(angle)
        table[:, sines:] = torch.cos(angle[:, : d_model // 2])
    else:
        table[:, 0::2] = torch.sin(angle)
        table[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return table.to(dtype)


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal positions; no parameters. Positions past the precomputed table are computed."""

    def __init__(
        self, d_model: int, max_positions: int = 1024, *, layout: SinusoidLayout = "interleaved"
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.layout: SinusoidLayout = layout
        # Not persistent: it is a function of the config, so checkpoints do not store it.
        self.register_buffer(
            "table", sinusoidal_table(max_positions, d_model, layout=layout), persistent=False
        )
        self.table: Tensor

    def forward(self, length: int, offset: int = 0) -> Tensor:
        """Encodings for positions offset .. offset + length - 1. Shapes: -> (length, d_model)."""
        if offset + length <= self.table.shape[0]:
            return self.table[offset : offset + length]
        return sinusoidal_table(
            length,
            self.d_model,
            offset=offset,
            layout=self.layout,
            dtype=self.table.dtype,
            device=self.table.device,
        )


class LearnedPositions(nn.Module):
    """One learned vector per position (BERT); a sequence may not exceed ``max_positions``."""

    def __init__(self, d_model: int, max_positions: int = 512) -> None:
        super().__init__()
        self.max_positions = max_positions
        self.weight = nn.Parameter(torch.empty(max_positions, d_model))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, length: int, offset: int = 0) -> Tensor:
        """Encodings for positions offset .. offset + length - 1. Shapes: -> (length, d_model)."""
        if offset + length > self.max_positions:
            raise ValueError(
                f"sequence of {offset + length} positions exceeds the {self.max_positions} learned "
                f"positions of this model; truncate the input"
            )
        return self.weight[offset : offset + length]
