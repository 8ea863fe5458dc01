"""Label-smoothed cross-entropy against a float64 hand computation."""

from __future__ import annotations

import math

import torch

from qkv.train.loss import label_smoothed_loss

PAD = 0


def reference(logits: torch.Tensor, target: torch.Tensor, eps: float) -> tuple[float, float]:
    """(1 - eps) * nll + eps * mean over the vocabulary of -log p, summed over non-pad tokens, in float64
    with explicit loops."""
    loss = nll_sum = 0.0
    batch, length, vocab = logits.shape
    for b in range(batch):
        for t in range(length):
            gold = int(target[b, t])
            if gold == PAD:
                continue
            row = [float(x) for x in logits[b, t].double()]
            top = max(row)
            log_z = top + math.log(sum(math.exp(x - top) for x in row))
            log_p = [x - log_z for x in row]
            nll = -log_p[gold]
            uniform = -sum(log_p) / vocab
            loss += (1 - eps) * nll + eps * uniform
            nll_sum += nll
    return loss, nll_sum


def test_label_smoothed_loss_matches_float64_hand_computation(rng: torch.Generator) -> None:
    logits = torch.randn(3, 5, 7, generator=rng) * 3
    target = torch.randint(1, 7, (3, 5), generator=rng)
    target[0, 3:] = PAD
    target[2, 1] = PAD  # a pad in the middle is ignored as well
    for eps in (0.0, 0.1, 0.3):
        loss, nll = label_smoothed_loss(logits, target, smoothing=eps, pad_id=PAD)
        want_loss, want_nll = reference(logits, target, eps)
        # float32 sums of 12 terms of order 1-10: well within 1e-5 relative.
        assert math.isclose(float(loss), want_loss, rel_tol=1e-5), eps
        assert math.isclose(float(nll), want_nll, rel_tol=1e-5), eps


def test_pads_contribute_nothing_not_even_gradient(rng: torch.Generator) -> None:
    logits = torch.randn(2, 4, 6, generator=rng, requires_grad=True)
    target = torch.tensor([[3, 2, PAD, PAD], [1, 5, 4, PAD]])
    loss, _ = label_smoothed_loss(logits, target, smoothing=0.1, pad_id=PAD)
    loss.backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[0, 2:] == 0) and torch.all(logits.grad[1, 3] == 0)
    # Changing the logits at pad positions leaves the loss unchanged.
    changed = logits.detach().clone()
    changed[0, 2:] += 100.0
    assert torch.equal(label_smoothed_loss(changed, target, smoothing=0.1, pad_id=PAD)[0], loss.detach())


def test_loss_is_a_sum_over_tokens_not_a_mean(rng: torch.Generator) -> None:
    logits = torch.randn(1, 3, 5, generator=rng)
    target = torch.tensor([[1, 2, 3]])
    whole, _ = label_smoothed_loss(logits, target, smoothing=0.1, pad_id=PAD)
    parts = sum(
        float(label_smoothed_loss(logits[:, i : i + 1], target[:, i : i + 1], smoothing=0.1, pad_id=PAD)[0])
        for i in range(3)
    )
    assert math.isclose(float(whole), parts, rel_tol=1e-6)


def test_gradient_equals_autograd_through_torch_cross_entropy_in_float64(rng: torch.Generator) -> None:
    """The hand-written backward against autograd through two F.cross_entropy calls (the loss as torch
    defines label smoothing), on float64, with pads and a non-unit upstream gradient."""
    logits = (torch.randn(4, 6, 9, generator=rng, dtype=torch.float64) * 2).requires_grad_()
    target = torch.randint(1, 9, (4, 6), generator=rng)
    target[1, 4:] = PAD
    target[3, 0] = PAD
    for eps in (0.0, 0.1):
        loss, nll = label_smoothed_loss(logits, target, smoothing=eps, pad_id=PAD)
        (ours,) = torch.autograd.grad(loss * 0.37, logits)
        flat, gold = logits.reshape(-1, 9), target.reshape(-1)
        want_loss = torch.nn.functional.cross_entropy(
            flat, gold, ignore_index=PAD, label_smoothing=eps, reduction="sum"
        )
        want_nll = torch.nn.functional.cross_entropy(flat, gold, ignore_index=PAD, reduction="sum")
        (want,) = torch.autograd.grad(want_loss * 0.37, logits)
        assert torch.allclose(loss, want_loss, rtol=1e-12, atol=0), eps
        assert torch.allclose(nll, want_nll, rtol=1e-12, atol=0), eps
        assert torch.allclose(ours, want, rtol=1e-10, atol=1e-14), eps
    assert torch.autograd.gradcheck(
        lambda x: label_smoothed_loss(x, target, smoothing=0.1, pad_id=PAD)[0], (logits,)
    )


def test_half_precision_logits_are_summed_in_float32(rng: torch.Generator) -> None:
    logits = torch.randn(2, 3, 50, generator=rng).to(torch.bfloat16).requires_grad_()
    target = torch.randint(1, 50, (2, 3), generator=rng)
    loss, _ = label_smoothed_loss(logits, target, smoothing=0.1, pad_id=PAD)
    want = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, 50), target.reshape(-1), label_smoothing=0.1, reduction="sum"
    )
    assert loss.dtype == torch.float32 and math.isclose(loss.item(), want.item(), rel_tol=1e-6)
    loss.backward()
    assert logits.grad is not None and logits.grad.dtype == torch.bfloat16
