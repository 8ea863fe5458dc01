"""The position-wise feed-forward network (section 3.3): FFN(x) = max(0, x W1 + b1) W2 + b2.

Applied to each position separately and identically: d_model -> d_ff (4 d_model in the paper) -> d_model.
ReLU as in the paper; GELU for BERT; SiLU (x sigmoid(x), Marian's "swish") for OPUS-MT models.
:func:`feed_forward` is the one definition, over products (``x -> x W^T + b``); :class:`FeedForward`
holds the weights and runs it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from qkv.config import Activation
from qkv.nn.dropout import Dropout

ACTIVATIONS = ("relu", "gelu", "silu")


def feed_forward(
    h: Tensor,
    fc_in: Callable[[Tensor], Tensor],
    fc_out: Callable[[Tensor], Tensor],
    activation: Activation,
    dropout: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """fc_out(dropout(activation(fc_in(h)))). Shapes: (..., d_model) -> (..., d_model)."""
    hidden = fc_in(h)  # (..., d_ff), a fresh tensor: the activation may run in place
    if activation == "gelu":
        hidden = F.gelu(hidden)
    elif activation == "silu":
        hidden = F.silu(hidden, inplace=True)
    else:
        hidden = hidden.relu_()
    if dropout is not None:
        hidden = dropout(hidden)
    return fc_out(hidden)


class FeedForward(nn.Module):
    """d_model -> d_ff -> d_model, with dropout after the activation (as tensor2tensor and torch do)."""

    def __init__(
        self, d_model: int, d_ff: int, *, activation: Activation = "relu", dropout: float = 0.0
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r} must be one of {ACTIVATIONS}")
        self.fc_in = nn.Linear(d_model, d_ff)  # W1, b1
        self.fc_out = nn.Linear(d_ff, d_model)  # W2, b2
        self.activation: Activation = activation
        self.dropout = Dropout(dropout)
        for fc in (self.fc_in, self.fc_out):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Shapes: (batch, length, d_model) -> (batch, length, d_model)."""
        return feed_forward(x, self.fc_in, self.fc_out, self.activation, self.dropout)
