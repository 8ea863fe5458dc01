"""Token embeddings (section 3.4): a lookup table whose output is multiplied by sqrt(d_model).

The scale makes token vectors (initialised with std d_model^-0.5) about as large as the positional
encodings they are added to. The same matrix can serve as the pre-softmax output projection ("we share
the same weight matrix between the two embedding layers and the pre-softmax linear transformation").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TokenEmbedding(nn.Module):
    """ids -> vectors * sqrt(d_model) (``scale=False`` for BERT, which does not scale)."""

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        *,
        scale: bool = True,
        init_std: float | None = None,
        pad_id: int | None = None,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model))
        nn.init.normal_(self.weight, std=d_model**-0.5 if init_std is None else init_std)
        if pad_id is not None:
            with torch.no_grad():
                self.weight[pad_id].zero_()
        self.multiplier = math.sqrt(d_model) if scale else 1.0

    def forward(self, ids: Tensor) -> Tensor:
        """Shapes: ids (batch, length) -> (batch, length, d_model)."""
        out = F.embedding(ids, self.weight)
        return out * self.multiplier if self.multiplier != 1.0 else out

    def logits(self, x: Tensor) -> Tensor:
        """The tied output projection x E^T. Shapes: (batch, length, d_model) -> (batch, length, vocab)."""
        return F.linear(x, self.weight)
