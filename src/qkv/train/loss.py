"""Label-smoothed cross-entropy (section 5.4: epsilon_ls = 0.1), summed over real target tokens.

With smoothing eps over a vocabulary of V, the target puts 1 - eps on the gold token and eps / V on every
token (torch's definition), so per position, with lse = logsumexp(logits):

    nll    = lse - logits[gold]
    smooth = lse - mean(logits)                 (= -sum_v log p_v / V)
    loss   = (1 - eps) * nll + eps * smooth
    d loss / d logits = softmax(logits) - (1 - eps) * onehot(gold) - eps / V

The logits are the largest tensor of a training step (tokens x vocabulary); autograd through two
``F.cross_entropy`` calls walks them about ten times. :class:`_SmoothedCrossEntropy` computes the loss and
the NLL in one forward (two passes: logsumexp, mean) and writes the gradient above in three in-place
passes. ``tests/train/test_loss.py`` checks both against ``F.cross_entropy`` in float64.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class _SmoothedCrossEntropy(torch.autograd.Function):
    """Per-row label-smoothed loss and NLL of logits (n, V) against target (n,); rows with weight 0 drop out."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: Tensor, target: Tensor, weight: Tensor, smoothing: float
    ) -> tuple[Tensor, Tensor]:
        lse = torch.logsumexp(logits, dim=-1)  # (n,)
        nll = lse - logits.gather(1, target.unsqueeze(1)).squeeze(1)  # (n,)
        loss = nll * (1.0 - smoothing)
        if smoothing > 0.0:
            loss = loss + (lse - logits.mean(dim=-1)) * smoothing
        ctx.save_for_backward(logits, target, weight, lse)
        ctx.smoothing = smoothing
        nll_sum = (nll * weight).sum()
        ctx.mark_non_differentiable(nll_sum)
        return (loss * weight).sum(), nll_sum

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor, grad_nll: Tensor) -> tuple[Tensor | None, ...]:
        logits, target, weight, lse = ctx.saved_tensors
        smoothing: float = ctx.smoothing
        grad = torch.exp(logits - lse.unsqueeze(1))  # softmax, (n, V)
        if smoothing > 0.0:
            grad.sub_(smoothing / logits.shape[1])
        grad.scatter_add_(1, target.unsqueeze(1), torch.full_like(lse, smoothing - 1.0).unsqueeze(1))
        grad.mul_((weight * grad_loss).unsqueeze(1))
        return grad, None, None, None


def label_smoothed_loss(
    logits: Tensor, target: Tensor, *, smoothing: float, pad_id: int
) -> tuple[Tensor, Tensor]:
    """Sum of the label-smoothed loss and of the plain negative log-likelihood over non-pad targets.

    The smoothed target puts 1 - smoothing on the gold token and spreads ``smoothing`` uniformly over the
    vocabulary (torch's definition, as ``F.cross_entropy(label_smoothing=...)``). The NLL is reported beside
    it because it is the quantity whose exponent is perplexity; it carries no gradient.

    Shapes: logits (..., vocab), target (...) -> two scalars.
    """
    flat_logits = logits.reshape(-1, logits.shape[-1])  # (n, vocab)
    if flat_logits.dtype in (torch.float16, torch.bfloat16):
        flat_logits = flat_logits.float()  # the softmax is summed over the vocabulary: float32 at least
    flat_target = target.reshape(-1)  # (n,)
    is_real_token = flat_target != pad_id
    weight = is_real_token.to(flat_logits.dtype)
    safe_target = flat_target.masked_fill(~is_real_token, 0)  # any in-range id; its weight is 0
    loss, nll = _SmoothedCrossEntropy.apply(flat_logits, safe_target, weight, float(smoothing))
    return loss, nll
