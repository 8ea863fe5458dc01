"""Lexical (terminology) constraints: every phrase is in every hypothesis returned, scored like any other
token (a float64 teacher-forced model is the reference); phrases the output already holds change nothing
(plain beam search is the reference); a beam wide enough finds the best output that holds the phrases (an
exhaustive search is the reference); room is made for prefix and phrases; bad constraints are refused,
naming the sentence, before any model runs."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import pytest

from qkv.decode import Lengths, Method, SearchConfig, TokenRules, decode, pad_batch
from qkv.decode.greedy import greedy_search
from qkv.decode.sampling import sample
from qkv.decode.step import CachedStepper
from qkv.infer.products import int8_available
from qkv.models.seq2seq import Transformer
from tests.decode.conftest import VOCAB, random_model
from tests.decode.teacher_forcing import float64_copy, log_prob

# float32 sums of up to ~20 float32 log-probs against one float64 teacher-forced pass: rounding only.
LOG_PROB_ATOL = 1e-4
# Short outputs keep the uncached reference cheap; the constraints raise a sentence's limit where needed.
SHORT = Lengths(max_len_a=1.0, max_len_b=2)
KINDS = ("random", "overlapping", "repeated")


def holds(tokens: Sequence[int], phrase: Sequence[int]) -> bool:
    """Whether ``phrase`` appears contiguously in ``tokens``."""
    n = len(phrase)
    return any(list(tokens[i : i + n]) == list(phrase) for i in range(len(tokens) - n + 1))


def is_valid(phrases: list[list[int]]) -> bool:
    """No phrase twice and none inside another (what decode refuses)."""
    return all(not holds(q, p) for p, q in itertools.permutations(phrases, 2))


def random_phrases(rng: random.Random, kind: str) -> list[list[int]]:
    """1-3 phrases of 1-3 ids (never <pad>, <s>, </s>). 'overlapping': each phrase starts with the end
    of another ("a b" and "b c"); 'repeated': an id repeats inside a phrase ("a a b")."""
    a, b, c, d = rng.sample(range(3, VOCAB), 4)
    if kind == "overlapping":
        return rng.choice([[[a, b], [b, c]], [[a, b], [b, c], [c, d]], [[a, b, c], [c, d]], [[a, b], [b, a]]])
    if kind == "repeated":
        return rng.choice([[[a, a, b]], [[a, a, b], [c]], [[a, a], [b, a, b]], [[a, a, b], [b, a]]])
    while True:
        phrases = [
            [rng.randrange(3, VOCAB) for _ in range(rng.randint(1, 3))] for _ in range(rng.randint(1, 3))
        ]
        if is_valid(phrases):
            return phrases


def random_sources(rng: random.Random, count: int = 6) -> list[list[int]]:
    """Sources of 2..6 real ids and </s>."""
    return [[rng.randrange(3, VOCAB) for _ in range(rng.randint(2, 6))] + [2] for _ in range(count)]


def token_lists(found: list[list[object]]) -> list[list[list[int]]]:
    return [[h.tokens for h in hyps] for hyps in found]  # type: ignore[attr-defined]


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("method", ["beam", "greedy"])
def test_every_phrase_is_in_every_hypothesis(seed: int, method: Method) -> None:
    """Random tiny models, random phrases of every kind, some sentences with a prefix too: every
    hypothesis (3-best for beam search) holds every phrase and keeps its prefix, its log_prob is the
    teacher-forced log-prob of its tokens; the same tokens in batches of 1 and 4, cached and uncached."""
    model = random_model(seed=seed)
    rng = random.Random(seed)
    sources = random_sources(rng)
    constraints = [random_phrases(rng, KINDS[i % len(KINDS)]) for i in range(len(sources))]
    constraints[4] = []  # a sentence without constraints in a batch with some
    prefixes = [[rng.randrange(3, VOCAB)] if i % 2 else [] for i in range(len(sources))]
    n_best = 3 if method == "beam" else 1
    search = SearchConfig(method=method, beam=4, n_best=n_best, lengths=SHORT)

    found = decode(model, sources, search, constraints=constraints, prefixes=prefixes, batch_size=4)
    plain = decode(model, sources, search, prefixes=prefixes, batch_size=4)
    # Not vacuous: some outputs of the search without constraints miss a phrase.
    assert any(not all(holds(h[0].tokens, p) for p in c) for h, c in zip(plain, constraints, strict=True))
    model64 = float64_copy(model)
    for source, phrases, prefix, hyps in zip(sources, constraints, prefixes, found, strict=True):
        assert 1 <= len(hyps) <= n_best
        for hyp in hyps:
            assert all(holds(hyp.tokens, phrase) for phrase in phrases), (phrases, hyp.tokens)
            assert hyp.tokens[: len(prefix)] == prefix
            assert not set(hyp.tokens) & {0, 1, 2}
            assert hyp.log_prob == pytest.approx(log_prob(model64, source, hyp.tokens), abs=LOG_PROB_ATOL)
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)

    alone = decode(model, sources, search, constraints=constraints, prefixes=prefixes, batch_size=1)
    assert token_lists(alone) == token_lists(found)  # type: ignore[arg-type]
    uncached = decode(
        model, sources, search, constraints=constraints, prefixes=prefixes, batch_size=4, cached=False
    )
    assert token_lists(uncached) == token_lists(found)  # type: ignore[arg-type]


def phrases_held_by(hyps: list[list[int]], rng: random.Random) -> list[list[int]]:
    """One or two phrases (1-3 ids) that every one of ``hyps`` holds; [] if they share no id."""
    first = hyps[0]
    spans = {tuple(first[i : i + n]) for n in (1, 2, 3) for i in range(len(first) - n + 1)}
    shared = sorted(s for s in spans if all(holds(h, s) for h in hyps))
    rng.shuffle(shared)
    chosen: list[list[int]] = []
    for span in shared:
        if len(chosen) < 2 and is_valid([*chosen, list(span)]):
            chosen.append(list(span))
    return chosen


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize(("method", "n_best"), [("beam", 1), ("beam", 3), ("greedy", 1)])
def test_phrases_the_output_already_holds_change_nothing(seed: int, method: Method, n_best: int) -> None:
    """Phrases cut from the output of the search without constraints (held by all its n-best): the same
    hypotheses come back, tokens, log-probs and scores."""
    model = random_model(seed=seed)
    rng = random.Random(10 + seed)
    sources = random_sources(rng, 8)
    search = SearchConfig(method=method, beam=4, n_best=n_best, lengths=SHORT)
    plain = decode(model, sources, search, batch_size=4)
    constraints = [phrases_held_by([h.tokens for h in hyps], rng) for hyps in plain]
    assert sum(bool(c) for c in constraints) >= 4
    assert decode(model, sources, search, constraints=constraints, batch_size=4) == plain


# -- exhaustive reference -------------------------------------------------------------------------------

TINY_VOCAB = 6  # <pad> <s> </s> and three ids an output may hold: 3, 4, 5
TINY_SOURCE = [4, 5, 3, 2]


def exhaustive(
    model64: Transformer, phrases: list[list[int]], longest: int, alpha: float
) -> list[tuple[float, list[int]]]:
    """Every output of at most ``longest`` ids that holds every phrase, with its teacher-forced float64
    score (log P / ((5 + n + 1) / 6) ** alpha for n ids), best first."""
    found = []
    for n in range(longest + 1):
        for tokens in itertools.product((3, 4, 5), repeat=n):
            if all(holds(tokens, p) for p in phrases):
                score = log_prob(model64, TINY_SOURCE, list(tokens)) / ((5 + n + 1) / 6) ** alpha
                found.append((score, list(tokens)))
    return sorted(found, key=lambda f: f[0], reverse=True)


def holds_apart(tokens: list[int], phrases: list[list[int]]) -> bool:
    """Whether ``tokens`` hold every phrase at places that do not overlap one another."""
    places = [
        [range(i, i + len(p)) for i in range(len(tokens)) if tokens[i : i + len(p)] == p] for p in phrases
    ]
    return any(
        all(not set(x) & set(y) for x, y in itertools.combinations(choice, 2))
        for choice in itertools.product(*places)
    )


@pytest.mark.parametrize(
    ("phrases", "max_len_b", "longest"),
    [
        ([[4, 5]], 3, 3),
        ([[5], [4]], 3, 3),
        ([[3, 4, 5]], 1, 3),  # the limit of 1 is raised to the phrase's 3
        ([[4, 4], [3]], 0, 3),  # raised from 0 to 3: "4 4 3" or "3 4 4"
        ([[4, 5], [5, 3]], 2, 4),  # overlapping: raised to 4, and "4 5 3" holds both in 3
    ],
)
@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_a_wide_beam_finds_the_exhaustive_best_under_the_phrases(
    phrases: list[list[int]], max_len_b: int, longest: int, alpha: float
) -> None:
    """The guarantee (docs/decoding.md): with a beam that keeps every candidate of every step (128 > 27
    live outputs of 3 ids x 4 next tokens) and early_stopping=False, the n-best list holds every output
    within the (raised) limit that holds the phrases at places apart, all in score order, and nothing
    that misses a phrase: where no phrases overlap, exactly the exhaustive list, best first."""
    model = random_model(seed=4, vocab=TINY_VOCAB)
    model64 = float64_copy(model)
    search = SearchConfig(
        beam=128,
        n_best=128,
        alpha=alpha,
        early_stopping=False,
        lengths=Lengths(max_len_a=0, max_len_b=max_len_b),
    )
    (hyps,) = decode(model, [TINY_SOURCE], search, constraints=[phrases])
    expected = exhaustive(model64, phrases, longest, alpha)
    got = [h.tokens for h in hyps]
    scores = [h.score for h in hyps]
    assert scores == sorted(scores, reverse=True)
    by_tokens = {tuple(t): s for s, t in expected}
    for hyp in hyps:
        assert tuple(hyp.tokens) in by_tokens, hyp.tokens  # holds the phrases, within the limit
        assert hyp.score == pytest.approx(by_tokens[tuple(hyp.tokens)], abs=LOG_PROB_ATOL)
    apart = [t for _, t in expected if holds_apart(t, phrases)]
    assert all(t in got for t in apart)
    if len(apart) == len(expected):
        assert got == [t for _, t in expected]
    else:  # what only fits by sharing ids, "x 4 5 3", is not searched
        assert [3, 4, 5, 3] not in got


@pytest.mark.skipif(not int8_available(), reason="this torch has no int8 kernels")
@pytest.mark.parametrize("method", ["beam", "greedy"])
def test_int8_decoding_holds_the_phrases(method: Method) -> None:
    model = random_model(seed=2)
    rng = random.Random(7)
    sources = random_sources(rng)
    constraints = [random_phrases(rng, KINDS[i % len(KINDS)]) for i in range(len(sources))]
    found = decode(model, sources, SearchConfig(method=method, n_best=1), constraints=constraints, int8=True)
    for phrases, hyps in zip(constraints, found, strict=True):
        assert all(holds(hyps[0].tokens, p) for p in phrases)


# -- lengths, prefixes, empty sources --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["beam", "greedy"])
def test_the_length_limit_makes_room_for_prefix_and_phrases(model: Transformer, method: Method) -> None:
    """A limit of 1 token is raised to the phrases' 3, or with a prefix to 4: the output is exactly the
    prefix and the phrases' ids."""
    search = SearchConfig(method=method, n_best=1, lengths=Lengths(max_len_a=0, max_len_b=1))
    (plain,) = decode(model, [[5, 6, 2]], search)
    assert len(plain[0].tokens) <= 1
    (hyps,) = decode(model, [[5, 6, 2]], search, constraints=[[[9, 10], [11]]])
    assert hyps[0].tokens in ([9, 10, 11], [11, 9, 10])
    (hyps,) = decode(model, [[5, 6, 2]], search, prefixes=[[8]], constraints=[[[9, 10], [11]]])
    assert hyps[0].tokens in ([8, 9, 10, 11], [8, 11, 9, 10])


def test_a_phrase_the_prefix_holds_is_met_by_it(model: Transformer, sources: list[list[int]]) -> None:
    """A phrase equal to the prefix, or inside it, asks for nothing more than the prefix."""
    search = SearchConfig(beam=4, n_best=2, lengths=SHORT)
    prefixes = [[5, 6, 7] for _ in sources]
    with_prefix = decode(model, sources, search, prefixes=prefixes)
    for phrases in ([[5, 6, 7]], [[6, 7]], [[5], [7]]):
        constraints = [phrases for _ in sources]
        assert decode(model, sources, search, prefixes=prefixes, constraints=constraints) == with_prefix


def test_a_phrase_that_starts_in_the_prefix_is_finished_after_it(model: Transformer) -> None:
    """The prefix [5, 6] starts the phrase [6, 7, 8]: a limit of 0 is raised to 2 + 3 tokens, and the
    output can only be the prefix and the phrase, overlapping."""
    search = SearchConfig(beam=4, lengths=Lengths(max_len_a=0, max_len_b=0))
    (hyps,) = decode(model, [[9, 2]], search, prefixes=[[5, 6]], constraints=[[[6, 7, 8]]])
    for hyp in hyps:
        assert hyp.tokens[:2] == [5, 6] and holds(hyp.tokens, [6, 7, 8]) and len(hyp.tokens) <= 5


def test_an_empty_source_with_constraints_is_decoded(model: Transformer) -> None:
    """Decoded from [</s>] so its output holds the phrase; without constraints an empty source still gives
    one empty hypothesis."""
    model64 = float64_copy(model)
    found = decode(model, [[], [2]], SearchConfig(beam=3), constraints=[[[5, 6]], []])
    assert found[1][0].tokens == []
    assert holds(found[0][0].tokens, [5, 6])
    assert found[0][0].log_prob == pytest.approx(
        log_prob(model64, [2], found[0][0].tokens), abs=LOG_PROB_ATOL
    )


# -- refused before any model runs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("constraints", "search", "message"),
    [
        ([[[5]]], SearchConfig(), "got 1 constraint lists for 2 sources: give one per source"),
        ([[[5]], [[6], []]], SearchConfig(), r"sentence 1: constraint \[\] is empty"),
        ([[[5, 0]], []], SearchConfig(), r"sentence 0: constraint \[5, 0\] holds <pad> \(id 0\)"),
        ([[], [[1]]], SearchConfig(), r"sentence 1: constraint \[1\] holds <s> \(id 1\)"),
        ([[], [[7, 2]]], SearchConfig(), r"sentence 1: constraint \[7, 2\] holds </s> \(id 2\)"),
        (
            [[[VOCAB]], []],
            SearchConfig(),
            rf"sentence 0: constraint \[{VOCAB}\]: id {VOCAB} is outside the target",
        ),
        ([[], [[4, -1]]], SearchConfig(), r"sentence 1: constraint \[4, -1\]: id -1 is outside the target"),
        ([[[5, 6], [5, 6]], []], SearchConfig(), r"sentence 0: constraint \[5, 6\] is given twice"),
        ([[], [[6], [5, 6, 7]]], SearchConfig(), r"sentence 1: .*\[6\] lies inside \[5, 6, 7\]"),
        ([[], [[5, 6, 7], [6, 7]]], SearchConfig(), r"sentence 1: .*\[6, 7\] lies inside \[5, 6, 7\]"),
        ([[5, 6], []], SearchConfig(), "sentence 0: constraints must be a list of phrases"),
        ([[], [[5]]], SearchConfig(method="sample"), "sentence 1: lexical constraints need beam search"),
        (
            [[], [[5] * 256]],
            SearchConfig(),
            "sentence 1: its prefix and constraints need 256 tokens, more than the 255",
        ),
    ],
)
def test_bad_constraints_are_errors(
    model: Transformer, constraints: list[list[list[int]]], search: SearchConfig, message: str
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model ran")

    model.encode = fail  # type: ignore[method-assign, assignment]
    # Sentence 1 is the shorter source: batches are sorted by length, errors still name the input index.
    with pytest.raises(ValueError, match=message):
        decode(model, [[5, 6, 7, 2], [6, 2]], search, constraints=constraints)


def test_sampling_without_phrases_is_allowed(model: Transformer) -> None:
    """Empty constraint lists ask for nothing: sampling runs as without them."""
    search = SearchConfig(method="sample", seed=4)
    sources = [[5, 6, 2], [7, 2]]
    assert decode(model, sources, search, constraints=[[], []]) == decode(model, sources, search)


def test_the_strategies_that_cannot_hold_phrases_refuse_them(model: Transformer) -> None:
    """Below decode: sampling and the greedy loop refuse rules with constraints (SearchConfig routes greedy
    decoding under constraints to beam search with one beam)."""
    rules = TokenRules.create(1, constraints=[[(5, 6)]])
    src = pad_batch([[7, 8, 2]], 0)
    stepper = CachedStepper(model)
    with pytest.raises(ValueError, match="lexical constraints need beam search"):
        SearchConfig(method="sample").run(stepper, src, rules=rules)
    with pytest.raises(ValueError, match="lexical constraints need beam search"):
        sample(stepper, src, generator=SearchConfig().new_generator(), rules=rules)
    with pytest.raises(ValueError, match="lexical constraints need beam search"):
        greedy_search(stepper, src, rules=rules)
    (hyps,) = SearchConfig(method="greedy").run(stepper, src, rules=rules)
    assert holds(hyps[0].tokens, [5, 6])
