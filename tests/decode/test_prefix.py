"""Forced target prefixes: kept verbatim by greedy, beam and sampling, scored like every other token
(teacher forcing in float64 is the reference), cached equal to uncached, checked before any model runs.
Sampling: reproducible by seed and the same whatever the batch."""

from __future__ import annotations

import pytest

from qkv.decode import Lengths, Method, SearchConfig, decode
from qkv.infer.products import int8_available
from qkv.models.seq2seq import Transformer
from tests.decode.conftest import VOCAB
from tests.decode.teacher_forcing import float64_copy, log_prob

# float32 sums of up to ~20 float32 log-probs against one float64 teacher-forced pass: rounding only.
LOG_PROB_ATOL = 1e-4
PREFIXES = [[5, 6], [], [7], [8, 9, 10], [4], [11]]  # one per fixture source; one without a prefix
METHODS: list[Method] = ["greedy", "beam", "sample"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("cached", [True, False])
def test_prefix_is_kept_and_scored_by_the_model(
    model: Transformer, sources: list[list[int]], method: Method, cached: bool
) -> None:
    """Sentences with different prefixes share batches of 4; every hypothesis (3-best for beam search)
    starts with its prefix, and its log_prob is the teacher-forced log-prob of prefix + rest + </s>."""
    search = SearchConfig(method=method, beam=4, n_best=3 if method == "beam" else 1, seed=3)
    found = decode(model, sources, search, prefixes=PREFIXES, batch_size=4, cached=cached)
    model64 = float64_copy(model)
    for source, prefix, hyps in zip(sources, PREFIXES, found, strict=True):
        assert len(hyps) == (3 if method == "beam" else 1)
        for hyp in hyps:
            assert hyp.tokens[: len(prefix)] == prefix
            assert hyp.log_prob == pytest.approx(log_prob(model64, source, hyp.tokens), abs=LOG_PROB_ATOL)
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("method", METHODS)
def test_cached_equals_uncached_with_prefixes(
    model: Transformer, sources: list[list[int]], method: Method
) -> None:
    search = SearchConfig(method=method, beam=3, n_best=2 if method == "beam" else 1)
    cached = decode(model, sources, search, prefixes=PREFIXES)
    uncached = decode(model, sources, search, prefixes=PREFIXES, cached=False)
    assert [[h.tokens for h in hyps] for hyps in cached] == [[h.tokens for h in hyps] for hyps in uncached]


@pytest.mark.skipif(not int8_available(), reason="this torch has no int8 kernels")
def test_int8_keeps_the_prefix(model: Transformer, sources: list[list[int]]) -> None:
    for method in METHODS:
        found = decode(model, sources, SearchConfig(method=method), prefixes=PREFIXES, int8=True)
        assert all(h[0].tokens[: len(p)] == p for h, p in zip(found, PREFIXES, strict=True))


def test_no_prefix_and_empty_prefixes_decode_as_before(model: Transformer, sources: list[list[int]]) -> None:
    for method in METHODS:
        search = SearchConfig(method=method, n_best=2 if method == "beam" else 1)
        plain = decode(model, sources, search)
        assert decode(model, sources, search, prefixes=[[] for _ in sources]) == plain


def test_the_length_limit_makes_room_for_the_prefix(model: Transformer) -> None:
    """A limit of 1 token is raised to the prefix's 3: the output is the prefix, then </s>."""
    search = SearchConfig(method="beam", lengths=Lengths(max_len_a=0, max_len_b=1))
    (hyps,) = decode(model, [[5, 6, 2]], search, prefixes=[[7, 8, 9]])
    assert hyps[0].tokens == [7, 8, 9]
    (plain,) = decode(model, [[5, 6, 2]], search)
    assert len(plain[0].tokens) <= 1


def test_an_empty_source_with_a_prefix_is_decoded(model: Transformer) -> None:
    """Without a prefix an empty source gives an empty output without running the model (as before);
    with one, it is decoded from [</s>] and keeps its prefix."""
    model64 = float64_copy(model)
    found = decode(model, [[], [2], []], SearchConfig(method="greedy"), prefixes=[[5, 6], [], [7]])
    assert found[1][0].tokens == []
    for hyps, prefix in ((found[0], [5, 6]), (found[2], [7])):
        assert hyps[0].tokens[: len(prefix)] == prefix
        assert hyps[0].log_prob == pytest.approx(log_prob(model64, [2], hyps[0].tokens), abs=LOG_PROB_ATOL)


@pytest.mark.parametrize(
    ("prefixes", "message"),
    [
        ([[5]], "got 1 prefixes for 2 sources: give one per source"),
        ([[5], [6, 2]], r"sentence 1: prefix \[6, 2\] holds </s> \(id 2\)"),
        ([[1, 5], []], r"sentence 0: prefix \[1, 5\] holds <s> \(id 1\)"),
        ([[0], []], r"sentence 0: prefix \[0\] holds <pad>"),
        ([[], [VOCAB]], rf"sentence 1: prefix \[{VOCAB}\]: id {VOCAB} is outside the target vocabulary"),
        ([[], [-1]], r"id -1 is outside the target vocabulary"),
    ],
)
def test_bad_prefixes_are_errors(model: Transformer, prefixes: list[list[int]], message: str) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model ran")

    model.encode = fail  # type: ignore[method-assign, assignment]
    with pytest.raises(ValueError, match=message):
        decode(model, [[5, 2], [6, 2]], prefixes=prefixes)


def test_a_prefix_longer_than_the_model_can_produce_is_an_error(model: Transformer) -> None:
    too_long = [5] * model.config.max_positions
    with pytest.raises(ValueError, match="sentence 0: its prefix and constraints need"):
        decode(model, [[5, 2]], SearchConfig(method="greedy"), prefixes=[too_long])


# -- sampling: reproducible and batch-invariant ---------------------------------------------------


def test_sampling_is_reproducible_and_batch_invariant(model: Transformer, sources: list[list[int]]) -> None:
    """Each sentence draws from its own generator, seeded from (seed, index): batches of 1 and of 8
    draw the same tokens (their log-probs differ by the rounding of a padded batch); another seed
    draws others. With prefixes too."""

    def draw(seed: int, batch_size: int, prefixes: list[list[int]] | None = None) -> list[list[int]]:
        search = SearchConfig(method="sample", seed=seed, temperature=1.5)
        found = decode(model, sources, search, batch_size=batch_size, prefixes=prefixes)
        return [hyps[0].tokens for hyps in found]

    alone = draw(11, 1)
    assert draw(11, 8) == alone
    assert draw(11, 3) == alone
    assert draw(12, 8) != alone
    assert draw(11, 1, PREFIXES) == draw(11, 8, PREFIXES)
