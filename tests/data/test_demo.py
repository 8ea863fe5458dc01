"""The demo corpus: seeded, thousands of distinct pairs, a function zh->en, hand-checked translations."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qkv.data import demo
from qkv.data import demo_grammar as grammar
from qkv.data.corpus import read_tsv


@pytest.fixture(scope="module")
def pairs() -> list[tuple[str, str]]:
    return demo.generate(seed=0)


def test_deterministic_for_a_seed(pairs: list[tuple[str, str]]) -> None:
    assert demo.generate(seed=0) == pairs
    assert demo.generate(seed=1) != pairs


def test_thousands_of_distinct_sources(pairs: list[tuple[str, str]]) -> None:
    assert len(pairs) == demo.DEFAULT_SIZE
    assert 5_000 <= len({source for source, _ in pairs}) == len(pairs)


def test_zh_to_en_is_a_function_across_seeds() -> None:
    # Samples from different seeds overlap; a source rendered two ways anywhere would show up here.
    translation: dict[str, str] = {}
    for seed in range(3):
        for source, target in demo.generate(seed=seed, size=6_000):
            assert translation.setdefault(source, target) == target, source


# Worked out by hand from the grammar, not by rendering.
HAND_CHECKED = {
    "我爱你。": "I love you.",
    "他爱她。": "He loves her.",
    "昨天他吃了苹果。": "He ate apples yesterday.",
    "你爱我吗？": "Do you love me?",
    "他喜欢猫吗？": "Does he like cats?",
    "昨天你看了电影吗？": "Did you watch movies yesterday?",
    "我没有看书。": "I did not read books.",
    "我有三本书。": "I have three books.",
    "她有一只猫。": "She has one cat.",
    "他很高。": "He is tall.",
    "明天我们会帮助他们。": "We will help them tomorrow.",
    "他们不喜欢咖啡。": "They do not like coffee.",
    "昨天我很累。": "I was tired yesterday.",
}


@pytest.mark.parametrize(("source", "target"), sorted(HAND_CHECKED.items()))
def test_hand_checked_pairs_are_in_the_corpus(pairs: list[tuple[str, str]], source: str, target: str) -> None:
    assert dict(pairs)[source] == target


@pytest.mark.parametrize(
    ("clause", "zh", "en"),
    [
        (grammar.Clause(grammar.PRONOUNS[3], grammar.VerbPredicate(grammar.HELP, person=grammar.PRONOUNS[4]), "past",
                     negated=True, time=grammar.YESTERDAY), "昨天她没有帮助我们。", "She did not help us yesterday."),
        (grammar.Clause(grammar.PRONOUNS[6], grammar.VerbPredicate(grammar.DRINK, thing=grammar.TEA, count=10), "future",
                     question=True, time=grammar.TOMORROW), "明天他们会喝十杯茶吗？", "Will they drink ten cups of tea tomorrow?"),
        (grammar.Clause(grammar.NOUN_PHRASES[0], grammar.AdjectivePredicate("忙", "busy"), "past", question=True,
                     time=grammar.YESTERDAY), "昨天我的朋友很忙吗？", "Was my friend busy yesterday?"),
        (grammar.Clause(grammar.PRONOUNS[1], grammar.AdjectivePredicate("饿", "hungry"), "future", negated=True),
         "你不会饿。", "You will not be hungry."),
        (grammar.Clause(grammar.PRONOUNS[0], grammar.AdjectivePredicate("高兴", "happy"), question=True),
         "我很高兴吗？", "Am I happy?"),
        (grammar.Clause(grammar.PRONOUNS[2], grammar.VerbPredicate(grammar.BUY, thing=grammar.FISH, count=2), "past"),
         "他买了两条鱼。", "He bought two fish."),
        (grammar.Clause(grammar.PRONOUNS[5], grammar.VerbPredicate(grammar.WAIT, person=grammar.NOUN_PHRASES[-1])),
         "你们等他们的老师。", "You wait for their teacher."),
    ],
)  # fmt: skip
def test_rendering_of_built_clauses(clause: grammar.Clause, zh: str, en: str) -> None:
    assert grammar.render_zh(clause) == zh
    assert grammar.render_en(clause) == en


def test_surface_form(pairs: list[tuple[str, str]]) -> None:
    unpunctuated = 0
    for source, target in pairs:
        assert not re.search(r"[\sA-Za-z0-9]", source), source
        assert source.endswith(("。", "？")) or not source.endswith(("吗", "？")), source
        unpunctuated += not source.endswith(("。", "？"))
        assert re.fullmatch(r"[A-Z][A-Za-z ]*[.?]", target), target
        assert target.endswith("?") == source.endswith("？"), (source, target)
    assert 0.03 * len(pairs) < unpunctuated < 0.15 * len(pairs)


def test_small_vocabulary(pairs: list[tuple[str, str]]) -> None:
    characters = {c for source, _ in pairs for c in source}
    words = {w for _, target in pairs for w in target.rstrip(".?").split()}
    assert len(characters) <= 200 and len(words) <= 200


def test_held_out_is_disjoint_from_train() -> None:
    train, held_out = demo.splits(seed=0, held_out=500)
    assert len(held_out) == 500 and len(train) + len(held_out) == demo.DEFAULT_SIZE
    assert demo.HEADLINE in held_out
    assert not {s for s, _ in train} & {s for s, _ in held_out}
    assert not {t for _, t in train} & {t for _, t in held_out}
    assert demo.splits(seed=0, held_out=500) == (train, held_out)


# 我爱你 and its close variants, written out by hand: with or without 。, 们 (plural you), or as a question.
HEADLINE_VARIANTS = {"我爱你", "我爱你。", "我爱你们", "我爱你们。", "我爱你吗？", "我爱你们吗？"}


@pytest.mark.parametrize(
    ("seed", "held_out", "size"), [(0, 500, demo.DEFAULT_SIZE), (1, 500, 6_000), (0, 20, 400)]
)
def test_the_headline_and_its_variants_are_never_trained_on(seed: int, held_out: int, size: int) -> None:
    """The demo's 我爱你 -> I love you. must be a sentence the model never saw (issue 27, point 7)."""
    train, held = demo.splits(seed=seed, held_out=held_out, size=size)
    assert not HEADLINE_VARIANTS & {source for source, _ in train}
    assert not {"I love you.", "Do I love you?"} & {target for _, target in train}
    assert demo.HEADLINE in held and len(held) == held_out


def test_what_the_headline_is_composed_from_is_still_trained_on() -> None:
    train, _ = demo.splits(seed=0)
    sources = {source.rstrip("。") for source, _ in train}
    assert {"我爱她", "他爱你", "我不爱你"} <= sources


def test_too_small_a_held_out_set_for_the_headline_is_refused() -> None:
    with pytest.raises(ValueError, match="smaller than the headline's"):
        demo.splits(seed=0, held_out=0, size=400)


def test_write_tsv_uses_the_shared_layout(tmp_path: Path) -> None:
    some = demo.generate(seed=0, size=200)
    path = tmp_path / "demo.tsv"
    demo.write_tsv(path, some)
    assert path.read_text(encoding="utf-8").splitlines()[0] == f"{some[0][1]}\t{some[0][0]}"
    assert read_tsv(path, src_col=2, tgt_col=1).pairs == some
    assert [p.name for p in tmp_path.iterdir()] == ["demo.tsv"]  # no temporary file left behind
