"""The position-wise feed-forward network (section 3.3): FFN(x) = max(0, x W1 + b1) W2 + b2.

Applied to each position separately and identically: d_model -> d_ff (4 d_model in the paper) -> d_model.
ReLU as in the paper; GELU for BERT.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from qkv.config import Activation
from qkv.nn.dropout import Dropout


class FeedForward(nn.Module):
    """d_model -> d_ff -> d_model, with dropout after the activation (as tensor2tensor and torch do)."""

    def __init__(
        self, d_model: int, d_ff: int, *, activation: Activation = "relu", dropout: float = 0.0
    ) -> None:
        super().__init__()
        if activation not in ("relu", "gelu"):
            raise ValueError(f"activation={activation!r} must be 'relu' or 'gelu'")
        self.fc_in = nn.Linear(d_model, d_ff)  # W1, b1
        self.fc_out = nn.Linear(d_ff, d_model)  # W2, b2
        self.activation = activation
        self.dropout = Dropout(dropout)
        for fc in (self.fc_in, self.fc_out):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Shapes: (batch, length, d_model) -> (batch, length, d_model)."""
        hidden = self.fc_in(x)  # (batch, length, d_ff)
        hidden = F.relu(hidden) if self.activation == "relu" else F.gelu(hidden)
        return self.fc_out(self.dropout(hidden))
