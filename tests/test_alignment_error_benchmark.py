"""benchmarks/alignment_error.py: the gold word alignments it derives from the demo grammar."""

from __future__ import annotations

import random

from benchmarks.alignment_error import corpus_aer, diagonal, gold, precision
from qkv.data import demo
from qkv.data.demo import ANCHORS


def test_gold_links_of_hand_checked_sentences() -> None:
    by_text = {gold(c, punctuated=True)[:2]: gold(c, punctuated=True)[2:] for c in ANCHORS}
    # 我 爱 你 。 / I love you .
    assert by_text[("我爱你。", "I love you.")] == ([(0, 0), (1, 1), (2, 2), (3, 3)], [])
    # 我 没 有 看 书 。 / I did not read books . : 没有 is "did not"
    sure, possible = by_text[("我没有看书。", "I did not read books.")]
    assert sure == [(0, 0), (1, 1), (2, 1), (1, 2), (2, 2), (3, 3), (4, 4), (5, 5)]
    assert possible == []
    # 她 有 一 只 猫 。 / She has one cat . : the measure word 只 possibly "cat"
    sure, possible = by_text[("她有一只猫。", "She has one cat.")]
    assert sure == [(0, 0), (1, 1), (2, 2), (4, 3), (5, 4)] and possible == [(3, 3)]
    # 你 爱 我 吗 ？ / Do you love me ? : "Do" only possibly 吗, "?" surely ？ and possibly 吗
    sure, possible = by_text[("你爱我吗？", "Do you love me?")]
    assert sure == [(0, 1), (1, 2), (2, 3), (4, 4)] and possible == [(3, 0), (3, 4)]


def test_gold_holds_for_every_construction_of_the_grammar() -> None:
    rng = random.Random(0)
    for _ in range(3000):  # gold() raises if its rendering or its words drift from the grammar's
        clause = demo.sample_clause(rng)
        chinese, english, sure, possible = gold(clause, punctuated=rng.random() < 0.9 or clause.question)
        assert {j for _, j in sure + possible} <= set(range(len(english.split()) + 1))
        assert not set(sure) & set(possible)


def test_corpus_aer_keeps_sentences_apart() -> None:
    # The same link in two sentences is two links: one right, one wrong -> 1 - 2 / 4.
    assert corpus_aer([[(0, 0)], [(0, 0)]], [[(0, 0)], [(1, 0)]], [[], []]) == 0.5
    assert diagonal(4, 2) == [(0, 0), (2, 1)]


def test_precision_with_and_without_the_final_word() -> None:
    found, sure, possible = [[(0, 0), (1, 1), (0, 2)]], [[(0, 0)]], [[(1, 1)]]
    assert precision(found, sure, possible, last=True) == 2 / 3
    assert precision(found, sure, possible, last=False) == 1.0
