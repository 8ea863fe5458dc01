"""Label-smoothed cross-entropy (section 5.4: epsilon_ls = 0.1), summed over real target tokens."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def label_smoothed_loss(
    logits: Tensor, target: Tensor, *, smoothing: float, pad_id: int
) -> tuple[Tensor, Tensor]:
    """Sum of the label-smoothed loss and of the plain negative log-likelihood over non-pad targets.

    The smoothed target puts 1 - smoothing on the gold token and spreads ``smoothing`` uniformly over the
    vocabulary (torch's definition). The NLL is reported beside it because it is the quantity whose
    exponent is perplexity.

    Shapes: logits (batch, tgt_len, vocab), target (batch, tgt_len) -> two scalars.
    """
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()
    flat_target = target.reshape(-1)
    loss = F.cross_entropy(
        flat_logits, flat_target, ignore_index=pad_id, label_smoothing=smoothing, reduction="sum"
    )
    nll = F.cross_entropy(flat_logits.detach(), flat_target, ignore_index=pad_id, reduction="sum")
    return loss, nll
