"""Greedy decoding: cached equals uncached, batching does not change a sentence, stopping rules."""

from __future__ import annotations

import math

import pytest
import torch

from qkv.decode import Lengths, pad_batch
from qkv.decode.greedy import greedy_search
from qkv.decode.step import CachedStepper, UncachedStepper, max_output_lengths
from qkv.models.seq2seq import Transformer
from tests.decode.conftest import random_model
from tests.decode.scripted import EOS, ScriptedStepper, src_for, table_script

# Scores are float32 sums over up to ~20 steps of log-probs that agree to rounding (see test_step).
SCORE_ATOL = 1e-4
A, B = 4, 5


@pytest.mark.parametrize("norm_first", [True, False], ids=["pre-LN", "post-LN"])
def test_greedy_cached_equals_uncached(sources: list[list[int]], norm_first: bool) -> None:
    model = random_model(norm_first=norm_first)
    src = pad_batch(sources, model.config.pad_id)
    with torch.inference_mode():
        cached = greedy_search(CachedStepper(model), src)
        uncached = greedy_search(UncachedStepper(model), src)
    assert [h.tokens for h in cached] == [h.tokens for h in uncached]
    for c, u in zip(cached, uncached, strict=True):
        assert c.log_prob == pytest.approx(u.log_prob, abs=SCORE_ATOL)
        assert c.score == pytest.approx(u.score, abs=SCORE_ATOL)
    if norm_first:  # the fixture's point: some sentences end early, others run to the limit
        limits = max_output_lengths(src, 0, max_len_a=1.2, max_len_b=10, max_len=256).tolist()
        lengths = [len(h.tokens) for h in cached]
        assert any(n < limit for n, limit in zip(lengths, limits, strict=True)), lengths
        assert any(n == limit for n, limit in zip(lengths, limits, strict=True)), lengths
        assert all(len(set(h.tokens)) > 1 for h in cached if len(h.tokens) > 2), [h.tokens for h in cached]


def test_sentence_alone_equals_sentence_in_padded_batch(model: Transformer, sources: list[list[int]]) -> None:
    stepper = CachedStepper(model)
    with torch.inference_mode():
        batched = greedy_search(stepper, pad_batch(sources, 0))
        for source, in_batch in zip(sources, batched, strict=True):
            (alone,) = greedy_search(stepper, pad_batch([source], 0))
            assert alone.tokens == in_batch.tokens
            assert alone.log_prob == pytest.approx(in_batch.log_prob, abs=SCORE_ATOL)


def test_output_never_holds_special_tokens_and_respects_limits(
    model: Transformer, sources: list[list[int]]
) -> None:
    src = pad_batch(sources, 0)
    with torch.inference_mode():
        hyps = greedy_search(CachedStepper(model), src, lengths=Lengths(max_len_a=0.5, max_len_b=2))
    limits = max_output_lengths(src, 0, max_len_a=0.5, max_len_b=2, max_len=256).tolist()
    for hyp, limit in zip(hyps, limits, strict=True):
        assert len(hyp.tokens) <= limit
        assert not set(hyp.tokens) & {0, 1, 2}


def test_min_len_equal_to_max_forces_the_length(model: Transformer, sources: list[list[int]]) -> None:
    with torch.inference_mode():
        lengths = Lengths(max_len_a=0, max_len_b=7, min_len=7)
        hyps = greedy_search(CachedStepper(model), pad_batch(sources, 0), lengths=lengths)
    assert [len(h.tokens) for h in hyps] == [7] * len(sources)


def test_greedy_on_a_script_by_hand() -> None:
    """Key 10: a .55 then </s> .55; key 11: b .6, then b .7, then forced </s> at max length 2 (.5)."""
    table = {
        (): {A: 0.55, B: 0.45},
        (A,): {EOS: 0.55, A: 0.45},
    }
    other = {(): {B: 0.6, A: 0.4}, (B,): {B: 0.7, EOS: 0.3}, (B, B): {A: 0.5, EOS: 0.5}}
    scripts = {10: table_script(table, 6), 11: table_script(other, 6)}
    stepper = ScriptedStepper(lambda key, prefix: scripts[key](key, prefix), vocab_size=6)
    first, second = greedy_search(
        stepper, src_for([10, 11]), alpha=1.0, lengths=Lengths(max_len_a=0, max_len_b=2)
    )
    assert first.tokens == [A]
    assert first.log_prob == pytest.approx(math.log(0.55 * 0.55))
    assert first.score == pytest.approx(math.log(0.55 * 0.55) / (7 / 6))  # 2 tokens with </s>
    assert second.tokens == [B, B]
    assert second.log_prob == pytest.approx(math.log(0.6 * 0.7 * 0.5))
    assert second.score == pytest.approx(math.log(0.6 * 0.7 * 0.5) / (8 / 6))
    # The first sentence leaves the batch after its second step; the third step runs one row.
    assert stepper.rows_per_step == [2, 2, 1]


def test_empty_batch_gives_no_hypotheses() -> None:
    stepper = ScriptedStepper(table_script({}, 6), vocab_size=6)
    assert greedy_search(stepper, torch.empty(0, 3, dtype=torch.long)) == []
    assert stepper.rows_per_step == []
