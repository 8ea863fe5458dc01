"""The step protocol: cached steps equal the uncached reference, rules on log-probs, low precision."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from qkv.decode import pad_batch
from qkv.decode.greedy import greedy_search
from qkv.decode.step import CachedStepper, Stepper, UncachedStepper, constrain, max_output_lengths
from qkv.models.seq2seq import Transformer

# Cached and uncached steps do the same float32 arithmetic on the newest position, split differently
# (one position against cached keys vs all positions at once): rounding only.
SAME_COMPUTATION_ATOL = 1e-5
NEG_INF = -math.inf


def test_cached_steps_equal_uncached_steps(model: Transformer, sources: list[list[int]]) -> None:
    """Feed the same tokens to both steppers; the log-probs agree at every step, with reordering."""
    src = pad_batch(sources, model.config.pad_id)
    cached, uncached = CachedStepper(model), UncachedStepper(model)
    generator = torch.Generator().manual_seed(3)
    with torch.inference_mode():
        cached_state, uncached_state = cached.encode(src), uncached.encode(src)
        tokens = torch.full((len(sources), 1), model.config.bos_id)
        for step in range(6):
            cached_lp, cached_state = cached.step(tokens, cached_state)
            uncached_lp, uncached_state = uncached.step(tokens, uncached_state)
            assert cached_lp.shape == (len(sources), model.config.tgt_vocab_size)
            assert cached_lp.dtype == torch.float32
            torch.testing.assert_close(cached_lp, uncached_lp, atol=SAME_COMPUTATION_ATOL, rtol=0)
            if step == 2:  # beam-search style reorder, with a repeated row
                order = torch.tensor([1, 1, 0, 5, 4, 3])
                cached_state, uncached_state = cached_state.select(order), uncached_state.select(order)
            tokens = torch.randint(3, model.config.tgt_vocab_size, (len(sources), 1), generator=generator)


def test_log_probs_are_normalised(model: Transformer, sources: list[list[int]]) -> None:
    stepper = CachedStepper(model)
    with torch.inference_mode():
        state = stepper.encode(pad_batch(sources, 0))
        log_probs, _ = stepper.step(torch.full((len(sources), 1), 1), state)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(len(sources)), atol=1e-5, rtol=0)


def _finite_steps(stepper: Stepper[Any], src: torch.Tensor, steps: int) -> torch.Tensor:
    """Run ``steps`` greedy steps (no rules), asserting finite log-probs; return the last tokens."""
    state = stepper.encode(src)
    tokens = torch.full((src.shape[0], 1), 1)
    for _ in range(steps):
        log_probs, state = stepper.step(tokens, state)
        assert bool(torch.isfinite(log_probs).all())
        tokens = log_probs.argmax(-1, keepdim=True)
    return tokens


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_padded_batch_is_finite_in_low_precision(model: Transformer, dtype: torch.dtype) -> None:
    """Padding, and a source that is all padding (cross-attention rows with no key to attend to), stay
    finite in bf16/fp16 on both steppers and both attention paths."""
    src = torch.tensor([[5, 6, 7, 8, 2], [9, 2, 0, 0, 0], [0, 0, 0, 0, 0]])
    low = model.to(dtype)
    with torch.inference_mode():
        _finite_steps(CachedStepper(low), src, 3)
        _finite_steps(UncachedStepper(low), src, 3)
        tgt = torch.tensor([[1, 5, 6], [1, 7, 0], [1, 0, 0]])  # padded target prefixes too
        for fused in (True, False):
            logits = low.decode(tgt, low.encode(src, fused=fused), fused=fused).logits
            assert logits.dtype == dtype
            assert bool(torch.isfinite(logits).all())
        hyps = greedy_search(CachedStepper(low), src)
    assert all(math.isfinite(h.log_prob) for h in hyps)


def test_constrain_bans_pad_and_bos_and_early_eos() -> None:
    log_probs = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.15, 0.25]] * 2))
    max_lens = torch.tensor([5, 5])
    kept = constrain(log_probs, 0, max_lens, min_len=0, pad_id=0, bos_id=1, eos_id=2)
    assert kept[0].tolist()[:2] == [NEG_INF, NEG_INF]
    torch.testing.assert_close(kept[:, 2:], log_probs[:, 2:])  # not renormalised
    early = constrain(log_probs, 1, max_lens, min_len=2, pad_id=0, bos_id=1, eos_id=2)
    assert early[:, 2].tolist() == [NEG_INF, NEG_INF]
    assert constrain(log_probs, 2, max_lens, min_len=2, pad_id=0, bos_id=1, eos_id=2)[0, 2] > NEG_INF


def test_constrain_at_max_length_allows_only_eos_with_its_log_prob() -> None:
    log_probs = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.15, 0.25]] * 2))
    kept = constrain(log_probs, 3, torch.tensor([3, 4]), min_len=10, pad_id=0, bos_id=1, eos_id=2)
    eos = log_probs[0, 2].item()  # log 0.3 in float32
    assert kept[0].tolist() == [NEG_INF, NEG_INF, eos, NEG_INF, NEG_INF]  # wins over min_len
    assert kept[1, 2] == NEG_INF  # row 1 may go on, and min_len still bans </s>
    assert kept[1, 3] == log_probs[1, 3]


def test_max_output_lengths_by_hand() -> None:
    src = torch.tensor([[5, 6, 7, 8, 9, 2], [5, 2, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    # floor(1.2 * 6 + 10) = floor(17.2) = 17; floor(1.2 * 2 + 10) = 12; floor(0 + 10) = 10
    assert max_output_lengths(src, 0, max_len_a=1.2, max_len_b=10, max_len=100).tolist() == [17, 12, 10]
    assert max_output_lengths(src, 0, max_len_a=1.2, max_len_b=10, max_len=15).tolist() == [15, 12, 10]
    assert max_output_lengths(src, 0, max_len_a=0.5, max_len_b=-2, max_len=15).tolist() == [1, 0, 0]
