"""Logits filters by hand; seeded sampling is reproducible and draws from the filtered distribution."""

from __future__ import annotations

import math

import pytest
import torch

from qkv.decode import pad_batch
from qkv.decode.greedy import greedy_search
from qkv.decode.sampling import apply_temperature, filter_logits, sample, top_k_filter, top_p_filter
from qkv.decode.step import CachedStepper
from qkv.models.seq2seq import Transformer
from tests.decode.scripted import ScriptedStepper, src_for, table_script

NEG_INF = -math.inf


def test_temperature_divides_logits() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    assert apply_temperature(logits, 0.5).tolist() == [[4.0, -2.0, 1.0]]
    with pytest.raises(ValueError, match="temperature=0"):
        apply_temperature(logits, 0.0)


def test_top_k_by_hand() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.0, -1.0, 5.0, 4.0]])
    assert top_k_filter(logits, 2).tolist() == [[NEG_INF, 3.0, 2.0, NEG_INF], [NEG_INF, NEG_INF, 5.0, 4.0]]
    assert top_k_filter(logits, 1).tolist() == [
        [NEG_INF, 3.0, NEG_INF, NEG_INF],
        [NEG_INF, NEG_INF, 5.0, NEG_INF],
    ]
    assert top_k_filter(logits, 0).tolist() == logits.tolist()  # 0 = off
    assert top_k_filter(logits, 9).tolist() == logits.tolist()
    ties = torch.tensor([[1.0, 2.0, 2.0, 0.0]])
    assert top_k_filter(ties, 1).tolist() == [[NEG_INF, 2.0, 2.0, NEG_INF]]  # ties with the k-th are kept


def test_top_p_by_hand() -> None:
    # Probabilities .15 .5 .05 .3 (vocabulary order); sorted: .5 .3 .15 .05, mass before: 0 .5 .8 .95.
    logits = torch.tensor([[0.15, 0.5, 0.05, 0.3]]).log()
    kept = top_p_filter(logits, 0.7)  # .5 + .3 reaches .7
    assert torch.isinf(kept).tolist() == [[True, False, True, False]]
    assert kept[0, 1] == logits[0, 1]  # kept logits are unchanged
    assert torch.isinf(top_p_filter(logits, 0.85)).tolist() == [[False, False, True, False]]
    assert torch.isinf(top_p_filter(logits, 0.1)).tolist() == [[True, False, True, True]]  # best always kept
    assert top_p_filter(logits, 1.0).tolist() == logits.tolist()
    with pytest.raises(ValueError, match="top_p=0"):
        top_p_filter(logits, 0.0)


def test_filters_compose_temperature_then_top_k_then_top_p() -> None:
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    # Temperature 0.5 squares the probabilities: .25 .09 .0225 .0025 (/ .365): .685 .247 .062 .007.
    # top_k 3 drops the last; top_p .9 keeps .685 + .247 = .932.
    filtered = filter_logits(logits, temperature=0.5, top_k=3, top_p=0.9)
    probs = torch.softmax(filtered, dim=-1)
    torch.testing.assert_close(probs, torch.tensor([[0.25, 0.09, 0.0, 0.0]]) / 0.34)


def test_sampling_is_reproducible_with_a_seed(model: Transformer, sources: list[list[int]]) -> None:
    src = pad_batch(sources, 0)

    def draw(seed: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(seed)
        with torch.inference_mode():
            return [h.tokens for h in sample(CachedStepper(model), src, generator=generator, temperature=1.5)]

    assert draw(0) == draw(0)
    assert draw(0) != draw(1)


def test_top_k_one_is_greedy(model: Transformer, sources: list[list[int]]) -> None:
    src = pad_batch(sources, 0)
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        sampled = sample(CachedStepper(model), src, generator=generator, top_k=1)
        greedy = greedy_search(CachedStepper(model), src)
    assert sampled == greedy


def test_samples_follow_the_filtered_distribution() -> None:
    """4000 one-token outputs from .5/.3/.15/.05 with top_p .85: frequencies .5/.3/.15 over .95."""
    a, b, c, d = 4, 5, 6, 7
    script = table_script({(): {a: 0.5, b: 0.3, c: 0.15, d: 0.05}}, 8)  # then </s> with probability 1
    stepper = ScriptedStepper(script, vocab_size=8)
    generator = torch.Generator().manual_seed(0)
    rows = 4000
    hyps = sample(stepper, src_for([10] * rows), generator=generator, top_p=0.85)
    counts = [sum(h.tokens == [t] for h in hyps) for t in (a, b, c, d)]
    expected = [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0]
    for count, p in zip(counts, expected, strict=True):
        sigma = math.sqrt(rows * p * (1 - p))
        assert abs(count - rows * p) <= 4 * sigma + 1e-9, (counts, expected)
    # log_prob is under the model's own distribution, not the filtered one
    assert {round(h.log_prob, 5) for h in hyps if h.tokens == [a]} == {round(math.log(0.5), 5)}
    assert all(len(h.tokens) == 1 for h in hyps)  # </s> had probability 0 first, then 1


def test_a_stream_decoded_in_pieces_draws_what_it_draws_whole(
    model: Transformer, sources: list[list[int]]
) -> None:
    """first_index places a piece in its stream: each sentence's sample depends on the seed and its place
    in the stream, not on where the stream was cut (qkv translate reads stdin batch by batch)."""
    from qkv.decode import SearchConfig, decode

    search = SearchConfig(method="sample", seed=11)
    whole = decode(model, sources, search, batch_size=4)
    pieces = decode(model, sources[:2], search) + decode(model, sources[2:], search, first_index=2)
    assert [h[0].tokens for h in pieces] == [h[0].tokens for h in whole]
    unplaced = decode(model, sources[2:], search)  # the same sentences as the start of a stream
    assert [h[0].tokens for h in unplaced] != [h[0].tokens for h in whole[2:]]
