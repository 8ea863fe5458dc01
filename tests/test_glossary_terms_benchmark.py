"""benchmarks/glossary_terms.py: how it draws a glossary from references and counts term use."""

from __future__ import annotations

from benchmarks.glossary_terms import draw_glossary, has_word, term_use, zh_terms
from qkv.glossary import Glossary


def test_zh_terms_are_ngrams_without_function_characters_at_their_edges() -> None:
    assert zh_terms("我喜欢棒球") == {"喜欢", "喜欢棒", "喜欢棒球", "欢棒", "欢棒球", "棒球"}


def test_a_pair_that_goes_together_in_training_is_drawn() -> None:
    dev = [("我喜欢棒球。", "I like baseball."), ("汤姆来了。", "Tom came.")]
    # 棒球/baseball together 6 times, apart never: Dice 1. 喜欢/like together only 4 times (under 5).
    train = [("他们打棒球。", "They play baseball.")] * 6 + [("我喜欢猫。", "I like cats.")] * 4
    train += [("汤姆来了。", "Tom came.")] * 3  # together 3 times: under the 5 required
    chosen = draw_glossary(dev, train, 10)
    assert [(z, e) for z, e, _ in chosen] == [("棒球", "baseball")]
    assert chosen[0][2] == 1.0


def test_term_use_counts_whole_words_of_matched_terms() -> None:
    glossary = Glossary((("棒球", "baseball"), ("汤姆", "Tom")))
    sources = ["我喜欢棒球。", "汤姆来了。", "我很累。"]
    assert term_use(["I like baseball.", "Tommy came.", "I am Tom."], sources, glossary) == (1, 2)
    assert has_word("Tom's hat", "Tom") and not has_word("Tommy", "Tom") and not has_word("tom", "Tom")
