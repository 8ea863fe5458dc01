"""Dynamic beam allocation: the order of one step's candidates, worked out by hand."""

from __future__ import annotations

import torch

from qkv.decode.constraints import TokenRules
from qkv.decode.dba import allocate

NEG_INF = float("-inf")
EOS = 2


def test_candidates_are_dealt_round_robin_over_banks() -> None:
    """Beam 2, vocabulary 6 (ids 3, 4, 5 allowed), sentence 0 must hold "4 5", sentence 1 nothing.

    Sentence 0's hypotheses: A has met nothing (its last id 3), B ends with 4 (one id of the phrase).
    Candidates, column = beam * 6 + id, and their bank (phrase ids met after the id):

        A+3 col 3  -1.0 bank 0     B+3 col 9   -1.5 bank 0 (B's 4 no longer starts the phrase)
        A+4 col 4  -3.0 bank 1     B+4 col 10  -4.0 bank 1 ("4 4" still ends with a start: 4)
        A+5 col 5  -2.0 bank 0     B+5 col 11  -5.0 bank 2 (the phrase is met)

    The 4 best by score are cols 3, 9, 5, 4; B+4 and B+5 join as ids that carry the phrase on. Dealt
    best of each bank, highest bank first: 11 (bank 2), 4 (bank 1), 3 (bank 0); then 10, 9; then 5.
    The first 2 * beam are returned in that order, though col 3 scores best. Sentence 1 has no phrases:
    the 4 best by score, best first.
    """
    rules = TokenRules.create(2, constraints=[[(4, 5)], []]).repeat_each(2)
    rules = rules.advance(torch.tensor([3, 4, 3, 3]))  # rows: A, B of sentence 0; two of sentence 1
    banned = [NEG_INF, NEG_INF, NEG_INF]  # <pad>, <s>, and </s> (a phrase is unmet)
    candidates = torch.tensor(
        [
            [*banned, -1.0, -3.0, -2.0, *banned, -1.5, -4.0, -5.0],
            [NEG_INF, NEG_INF, -0.5, -2.5, -0.7, -3.0, NEG_INF, NEG_INF, -1.2, -0.9, -4.0, -6.0],
        ]
    )
    scores, columns = allocate(candidates, rules, beam=2, eos_id=EOS)
    assert columns.tolist() == [[11, 4, 3, 10], [2, 4, 9, 8]]
    assert torch.equal(scores, candidates.gather(1, columns))  # each candidate keeps its score


def test_a_hypothesis_that_met_every_phrase_may_end_and_ranks_in_the_top_bank() -> None:
    """Beam 2, phrase "4": A has met it (its last id 4), B has not. A's </s> (col 2) is allowed and sits
    in the top bank with A's other ids and B+4 (col 10); B+3 and B+5 stay in bank 0. Dealt: bank 1's
    best (A+</s>, -0.2), bank 0's best (B+3, -0.4), then the second bests (A+3, -0.3; B+5, -0.45)."""
    rules = TokenRules.create(1, constraints=[[(4,)]]).repeat_each(2)
    rules = rules.advance(torch.tensor([4, 3]))
    candidates = torch.tensor(
        [[NEG_INF, NEG_INF, -0.2, -0.3, -0.6, -0.5, NEG_INF, NEG_INF, NEG_INF, -0.4, -3.0, -0.45]]
    )
    scores, columns = allocate(candidates, rules, beam=2, eos_id=EOS)
    # banks: A+</s> 1, A+3 1, A+4 1, A+5 1; B+3 0, B+4 1, B+5 0
    # sorted: bank 1: 2 (-0.2), 3 (-0.3), 5 (-0.5), 4 (-0.6), 10 (-3.0); bank 0: 9 (-0.4), 11 (-0.45)
    # dealt: rank 0: 2, 9; rank 1: 3, 11; rank 2: 5 ...
    assert columns.tolist() == [[2, 9, 3, 11]]
    assert torch.equal(scores, candidates.gather(1, columns))
