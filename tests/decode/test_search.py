"""The search configuration: every bad option is a ValueError naming its field; run() picks the strategy."""

from __future__ import annotations

import math

import pytest

from qkv.decode import Lengths, SearchConfig
from tests.decode.scripted import EOS, ScriptedStepper, src_for, table_script

A, B = 4, 5
# Greedy takes A (.55) then </s> (.55): .3025. A beam of two also keeps B (.45), whose only next token is
# </s> (a prefix missing from the table ends): .45, the better sentence.
TABLE = {(): {A: 0.55, B: 0.45}, (A,): {EOS: 0.55, A: 0.45}}


def stepper() -> ScriptedStepper:
    return ScriptedStepper(table_script(TABLE, 6), vocab_size=6)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"method": "nucleus"}, "method='nucleus' must be 'greedy', 'beam' or 'sample'"),
        ({"beam": 0}, "beam=0 must be at least 1"),
        ({"n_best": 0}, "n_best=0 must be at least 1"),
        ({"beam": 4, "n_best": 5}, "n_best=5 must be at most beam=4"),
        ({"alpha": math.nan}, "alpha=nan must be a finite number"),
        ({"alpha": math.inf}, "alpha=inf must be a finite number"),
        ({"temperature": 0.0}, "temperature=0.0 must be a finite number > 0"),
        ({"temperature": -1.0}, "temperature=-1.0 must be"),
        ({"temperature": math.inf}, "temperature=inf must be"),
        ({"top_k": -1}, "top_k=-1 must be at least 0"),
        ({"top_p": 0.0}, r"top_p=0.0 must be in \(0, 1\]"),
        ({"top_p": 2}, r"top_p=2 must be in \(0, 1\]"),
        ({"top_p": math.nan}, r"top_p=nan must be in \(0, 1\]"),
        ({"seed": 2**64}, "seed=18446744073709551616 must be in"),
        ({"seed": -(2**63) - 1}, "seed=-9223372036854775809 must be in"),
    ],
)
def test_each_bad_option_is_an_error_naming_its_field(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SearchConfig(**options)  # type: ignore[arg-type]


def test_n_best_above_beam_is_only_an_error_for_beam_search() -> None:
    assert SearchConfig(method="sample", beam=1, n_best=2).n_best == 2  # one sample per sentence anyway
    assert SearchConfig(method="beam", beam=4, n_best=4).n_best == 4


def test_the_defaults_are_beam_search_with_four_beams() -> None:
    search = SearchConfig()
    assert (search.method, search.beam, search.n_best, search.alpha, search.early_stopping) == (
        "beam",
        4,
        1,
        0.6,
        True,
    )
    assert (search.temperature, search.top_k, search.top_p, search.seed) == (1.0, 0, 1.0, 0)
    assert search.lengths == Lengths(max_len_a=1.2, max_len_b=10, max_len=256, min_len=0)


def test_run_greedy_takes_the_most_probable_token_each_step() -> None:
    (hyps,) = SearchConfig(method="greedy", alpha=0.0).run(stepper(), src_for([10]))
    assert [h.tokens for h in hyps] == [[A]]
    assert hyps[0].log_prob == pytest.approx(math.log(0.55 * 0.55))


def test_run_beam_finds_the_better_sentence_and_returns_n_best() -> None:
    (hyps,) = SearchConfig(method="beam", beam=2, n_best=2, alpha=0.0).run(stepper(), src_for([10]))
    assert [h.tokens for h in hyps] == [[B], [A]]
    assert [h.log_prob for h in hyps] == pytest.approx([math.log(0.45), math.log(0.55 * 0.55)])


def test_run_applies_the_lengths() -> None:
    """No token allowed before </s>: an empty output (</s> has probability 0 there: log-prob -inf); </s>
    banned before two tokens: A, A, then </s> (a prefix missing from the table ends)."""
    none = SearchConfig(method="greedy", lengths=Lengths(max_len_a=0, max_len_b=0))
    ((hyp,),) = none.run(stepper(), src_for([10]))
    assert hyp.tokens == [] and hyp.log_prob == -math.inf
    two = SearchConfig(method="greedy", lengths=Lengths(max_len_a=0, max_len_b=2, min_len=2))
    ((hyp,),) = two.run(stepper(), src_for([10]))
    assert hyp.tokens == [A, A]
    assert hyp.log_prob == pytest.approx(math.log(0.55 * 0.45))


def test_run_samples_from_the_seed() -> None:
    """top_k=1 leaves one token to draw: greedy's output. Without a generator, one is seeded from ``seed``
    at each call, so two calls draw the same; an explicit generator continues its own stream."""
    (hyps,) = SearchConfig(method="sample", top_k=1).run(stepper(), src_for([10]))
    assert hyps[0].tokens == [A]
    search = SearchConfig(method="sample", seed=3)
    keys = [10] * 40
    first = [h.tokens for (h,) in search.run(stepper(), src_for(keys))]
    assert [h.tokens for (h,) in search.run(stepper(), src_for(keys))] == first
    assert [h.tokens for (h,) in search.run(stepper(), src_for(keys), search.new_generator())] == first
    assert len({tuple(t) for t in first}) > 1  # 40 draws, not all alike
