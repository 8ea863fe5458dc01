"""Beam search: against exhaustive search and hand-computed scores on scripted models; beam=1 is greedy;
cached equals uncached; a sentence decodes the same alone and in a padded batch."""

from __future__ import annotations

import math

import pytest
import torch

from qkv.decode import Lengths, pad_batch
from qkv.decode.beam import beam_search
from qkv.decode.greedy import greedy_search
from qkv.decode.step import CachedStepper, UncachedStepper
from qkv.models.seq2seq import Transformer
from tests.decode.scripted import (
    EOS,
    ScriptedStepper,
    exhaustive_search,
    random_script,
    src_for,
    table_script,
)

# Scores: float32 sums of a few log-probs against the float64 exhaustive search (rounding, ~1e-7 each),
# or of model log-probs that agree to rounding (see test_step).
SCORE_ATOL = 1e-5
MODEL_SCORE_ATOL = 1e-4
A, B = 4, 5

# A script where greedy search is fooled at alpha = 0, and the length penalty changes the winner:
#   <s> -> a .6 | b .4;  a -> b .5 | </s> .3 | a .2;  b -> </s> .7 | a .15 | b .15 (b is never taken after)
#   a b -> a .9 | </s> .05 | b .05;  a b a -> </s> .9 | ...;  a a -> </s> .6 | a .2 | b .2
# Complete outputs:  "b" .4 * .7 = .28;  "a b a" .6 * .5 * .9 * .9 = .243;  "a" .6 * .3 = .18;
#                    "a a" .6 * .2 * .6 = .072; the others are smaller.
TABLE = {
    (): {A: 0.6, B: 0.4},
    (A,): {B: 0.5, EOS: 0.3, A: 0.2},
    (B,): {EOS: 0.7, A: 0.15, B: 0.15},
    (A, B): {A: 0.9, EOS: 0.05, B: 0.05},
    (A, B, A): {EOS: 0.9, A: 0.05, B: 0.05},
    (A, A): {EOS: 0.6, A: 0.2, B: 0.2},
}
LP2, LP3, LP4 = 7 / 6, 8 / 6, 9 / 6  # ((5 + n) / 6) ** 1 for n = 2, 3, 4 tokens including </s>


def run(stepper: ScriptedStepper, keys: list[int], **options: object) -> list[list[tuple[list[int], float]]]:
    lengths = Lengths(max_len_a=0, max_len_b=3)
    found = beam_search(stepper, src_for(keys), lengths=lengths, **options)  # type: ignore[arg-type]
    return [[(h.tokens, h.score) for h in hyps] for hyps in found]


def assert_hyps(found: list[tuple[list[int], float]], expected: list[tuple[list[int], float]]) -> None:
    assert [tokens for tokens, _ in found] == [tokens for tokens, _ in expected]
    for (_, score), (_, want) in zip(found, expected, strict=True):
        assert score == pytest.approx(want, abs=SCORE_ATOL)


@pytest.mark.parametrize(
    ("alpha", "early_stopping", "expected"),
    [
        # alpha 0: "b" wins (.28 > .243), though greedy takes a, b, a.
        (0.0, True, [([B], math.log(0.28)), ([A, A], math.log(0.072))]),
        (0.0, False, [([B], math.log(0.28)), ([A, B, A], math.log(0.243))]),
        # alpha 1: "a b a" wins (log .243 / 1.5 = -0.943 > log .28 / (7/6) = -1.091). Early stopping
        # stops once "b" and "a a" are finished and misses it; the bound rule keeps searching.
        (1.0, True, [([B], math.log(0.28) / LP2), ([A, A], math.log(0.072) / LP3)]),
        (1.0, False, [([A, B, A], math.log(0.243) / LP4), ([B], math.log(0.28) / LP2)]),
    ],
)
def test_beam_on_a_hand_set_script(
    alpha: float, early_stopping: bool, expected: list[tuple[list[int], float]]
) -> None:
    stepper = ScriptedStepper(table_script(TABLE, 6), vocab_size=6)
    (found,) = run(stepper, [10], beam=2, alpha=alpha, early_stopping=early_stopping)
    assert_hyps(found, expected)
    score, _, best = exhaustive_search(stepper.script, 10, 6, 3, alpha)[0]
    if not early_stopping:
        assert found[0][0] == list(best)
        assert found[0][1] == pytest.approx(score, abs=SCORE_ATOL)
    (greedy,) = greedy_search(
        ScriptedStepper(table_script(TABLE, 6), 6), src_for([10]), lengths=Lengths(max_len_a=0, max_len_b=3)
    )
    assert greedy.tokens == [A, B, A]


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_wide_beam_finds_the_exhaustive_n_best(alpha: float) -> None:
    """With a beam as wide as all 40 outputs (3 tokens, up to 3 long) and the bound stopping rule,
    beam search is exact: its whole n-best list is the exhaustive one, for each sentence of a batch."""
    script = random_script(vocab_size=6, seed=7)
    keys = [10, 11, 12]
    found = run(ScriptedStepper(script, 6), keys, beam=40, alpha=alpha, early_stopping=False)
    for key, hyps in zip(keys, found, strict=True):
        expected = [(list(tokens), score) for score, _, tokens in exhaustive_search(script, key, 6, 3, alpha)]
        assert len(expected) == 40
        assert_hyps(hyps, expected)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_narrow_beam_finds_the_exhaustive_best_on_random_scripts(alpha: float) -> None:
    script = random_script(vocab_size=6, seed=3, spread=3.0)
    keys = list(range(10, 18))
    found = run(ScriptedStepper(script, 6), keys, beam=4, alpha=alpha, early_stopping=False)
    for key, hyps in zip(keys, found, strict=True):
        score, _, tokens = exhaustive_search(script, key, 6, 3, alpha)[0]
        assert hyps[0][0] == list(tokens)
        assert hyps[0][1] == pytest.approx(score, abs=SCORE_ATOL)


def test_n_best_is_sorted_distinct_and_capped(model: Transformer, sources: list[list[int]]) -> None:
    with torch.inference_mode():
        found = beam_search(CachedStepper(model), pad_batch(sources, 0), beam=5, n_best=3)
    for hyps in found:
        assert len(hyps) == 3
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == 3
        assert all(not set(h.tokens) & {0, 1, 2} for h in hyps)


def test_done_sentences_leave_the_batch() -> None:
    """Key 10 is done after 2 steps (beam 2, early stopping); key 11 runs on alone."""
    short = table_script({(): {A: 0.5, B: 0.5 - 1e-3}, (A,): {EOS: 1.0}, (B,): {EOS: 1.0}}, 6)
    long = table_script({(): {A: 1.0}, (A,): {A: 1.0}, (A, A): {A: 1.0}}, 6)
    stepper = ScriptedStepper(lambda key, prefix: (short if key == 10 else long)(key, prefix), 6)
    found = run(stepper, [10, 11], beam=2)
    assert [h[0] for h in found[0]] == [[A], [B]]
    assert found[1][0][0] == [A, A, A]
    assert stepper.rows_per_step == [4, 4, 2, 2]


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_beam_of_one_is_greedy(model: Transformer, sources: list[list[int]], alpha: float) -> None:
    src = pad_batch(sources, 0)
    with torch.inference_mode():
        greedy = greedy_search(CachedStepper(model), src, alpha=alpha)
        beam = beam_search(CachedStepper(model), src, beam=1, alpha=alpha)
    assert [[g] for g in greedy] == beam  # tokens, log-probs and scores, exactly


def test_beam_cached_equals_uncached(model: Transformer, sources: list[list[int]]) -> None:
    src = pad_batch(sources, 0)
    with torch.inference_mode():
        cached = beam_search(CachedStepper(model), src, beam=3)
        uncached = beam_search(UncachedStepper(model), src, beam=3)
    assert [[h.tokens for h in hyps] for hyps in cached] == [[h.tokens for h in hyps] for hyps in uncached]
    for c_hyps, u_hyps in zip(cached, uncached, strict=True):
        for c, u in zip(c_hyps, u_hyps, strict=True):
            assert c.score == pytest.approx(u.score, abs=MODEL_SCORE_ATOL)


def test_sentence_alone_equals_sentence_in_padded_batch(model: Transformer, sources: list[list[int]]) -> None:
    stepper = CachedStepper(model)
    with torch.inference_mode():
        batched = beam_search(stepper, pad_batch(sources, 0), beam=3)
        for source, in_batch in zip(sources, batched, strict=True):
            (alone,) = beam_search(stepper, pad_batch([source], 0), beam=3)
            assert [h.tokens for h in alone] == [h.tokens for h in in_batch]
            for a, b in zip(alone, in_batch, strict=True):
                assert a.score == pytest.approx(b.score, abs=MODEL_SCORE_ATOL)


def test_beam_must_be_positive() -> None:
    with pytest.raises(ValueError, match="beam=0"):
        beam_search(ScriptedStepper(random_script(6), 6), src_for([10]), beam=0)


def test_empty_batch_gives_no_hypotheses() -> None:
    stepper = ScriptedStepper(random_script(6), 6)
    assert beam_search(stepper, torch.empty(0, 3, dtype=torch.long), beam=3) == []
    assert stepper.rows_per_step == []


@pytest.mark.parametrize("early_stopping", [True, False])
def test_each_sentence_stops_at_its_own_length_limit(
    model: Transformer, sources: list[list[int]], early_stopping: bool
) -> None:
    """Sources of different lengths get different limits (max_len_a = 1); with </s> banned until then
    (min_len above every limit), every hypothesis of a sentence is exactly as long as its own limit, the
    shortest sentence's included, while the longer ones search on."""
    src = pad_batch(sources, 0)
    limits = [len(s) for s in sources]  # max_len_a=1, max_len_b=0: source length, </s> included
    assert len(set(limits)) > 1
    with torch.inference_mode():
        found = beam_search(
            CachedStepper(model), src, beam=3, lengths=Lengths(max_len_a=1.0, max_len_b=0, min_len=100),
            early_stopping=early_stopping,
        )  # fmt: skip
    for limit, hyps in zip(limits, found, strict=True):
        assert hyps and all(len(h.tokens) == limit for h in hyps)
