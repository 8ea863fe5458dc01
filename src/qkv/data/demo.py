"""The built-in Chinese->English demo corpus, generated from a small grammar and lexicon.

Every sentence is built as a :class:`Clause` (subject, predicate, tense, negation, question, time word) and
rendered twice, once in each language, so each Chinese sentence has exactly one English translation. The
grammar covers what a learner meets first:

- pronouns 我 I, 你 you, 他 he, 她 she, 我们 we, 你们 you, 他们 they, their object forms (me, him, her, us,
  them) and possessives (我的朋友 my friend);
- verbs that agree with the subject (he loves / I love) in three tenses: present, past (了, 昨天
  yesterday) and future (会, 明天 tomorrow); the time word opens the Chinese sentence and closes the English
  one (昨天我吃了苹果。 -> I ate apples yesterday.);
- negation with 不 (present and future) and 没有 (past): 我没有看书。 -> I did not read books.
  (English always uses the full forms "do not", "did not", "will not", "is not");
- yes/no questions with 吗: 你爱我吗？ -> Do you love me?  昨天你吃了苹果吗？ -> Did you eat apples yesterday?
- numbers with measure words: 我有三本书。 -> I have three books.  她有一只猫。 -> She has one cat.
  (一 is always "one");
- adjectives with 很: 他很高。 -> He is tall.

The Chinese side has no spaces and ends in 。 or ？, except for a tenth of the statements, which drop the 。
so that a model also takes input typed without it (我爱你 as well as 我爱你。). The English side is
capitalised and ends in . or ?. Bare objects are generic: plural for things one counts (我喜欢猫。 -> I like
cats.), singular for the rest (他喝茶。 -> He drinks tea.). 你 and 你们 are both "you": several Chinese
sentences may share one English sentence, never the other way round.

The corpus is a pure function of its seed. Files written by :func:`write_tsv` follow the convention of the
shared cmn-eng data: column 1 English, column 2 Chinese (read zh->en with ``src_col=2, tgt_col=1``).
The lexicon and the two renderings live in ``qkv.data.demo_grammar``; this module samples from them.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

from qkv.data.demo_grammar import (
    ADJECTIVES,
    ALL_TENSES,
    APPLE,
    BOOK,
    CAT,
    COFFEE,
    EAT,
    FRAMES,
    HAVE,
    HELP,
    LIKE,
    LOVE,
    MOVIE,
    NOUN_PHRASES,
    PRONOUNS,
    READ,
    TODAY,
    TOMORROW,
    WATCH,
    YESTERDAY,
    AdjectivePredicate,
    Clause,
    Person,
    Tense,
    TimeWord,
    VerbPredicate,
    render_en,
    render_zh,
)
from qkv.storage import write_file

#: Pairs in the corpus by default.
DEFAULT_SIZE = 12_000
#: Pairs held out (for validation) by default.
DEFAULT_HELD_OUT = 500
#: The sentence the demo translates; it and its close variants are always held out (see :func:`splits`).
HEADLINE = ("我爱你。", "I love you.")
#: The English sides held out with the headline: 我爱你 with or without 。 or 们 ("I love you."), and the
#: question 我爱你吗？ ("Do I love you?"). Sentences that only contain the words (我不爱你, 我爱你的朋友)
#: stay in the pool: they are other sentences, from which the model is to compose the headline.
HEADLINE_GROUP = ("I love you.", "Do I love you?")
#: The share of statements written without the final 。.
UNPUNCTUATED_SHARE = 0.1


# --- sampling ----------------------------------------------------------------------------------------------


def _pick_person(rng: random.Random) -> Person:
    # Pronouns carry most of the demo (我爱你), so they come up more often than the 42 noun phrases.
    return rng.choice(PRONOUNS) if rng.random() < 0.7 else rng.choice(NOUN_PHRASES)


def _same_person(a: Person, b: Person) -> bool:
    """True for pairs like 我/我们 or 你/你们 that would give "I love us"; third persons may differ."""
    return a == b or (a.pronoun_person in (1, 2) and a.pronoun_person == b.pronoun_person)


def _time_for(rng: random.Random, tense: Tense, adjective: bool) -> TimeWord | None:
    if tense == "past":
        # Without 昨天 a Chinese adjective sentence reads as present, so the past needs the time word.
        return YESTERDAY if adjective or rng.random() < 0.5 else None
    if tense == "future":
        return rng.choice((None, TOMORROW, TODAY))
    return TODAY if adjective and rng.random() < 0.25 else None


def sample_clause(rng: random.Random) -> Clause:
    """One random clause of the grammar: a verb frame four times in five, otherwise an adjective."""
    subject = _pick_person(rng)
    question = rng.random() < 0.3
    if rng.random() < 0.2:
        adjective = AdjectivePredicate(*rng.choice(ADJECTIVES))
        tense: Tense = rng.choice(ALL_TENSES)
        negated = not question and rng.random() < 0.3
        return Clause(subject, adjective, tense, negated, question, _time_for(rng, tense, adjective=True))
    frame = rng.choice(FRAMES)
    tense = rng.choice(frame.tenses)
    negated = not frame.counted and not question and rng.random() < 0.3
    if frame.counted:
        predicate = VerbPredicate(frame.verb, thing=rng.choice(frame.things), count=rng.randint(1, 10))
    elif frame.persons and (not frame.things or rng.random() < 0.5):
        person = _pick_person(rng)
        while _same_person(subject, person):
            person = _pick_person(rng)
        predicate = VerbPredicate(frame.verb, person=person)
    else:
        predicate = VerbPredicate(frame.verb, thing=rng.choice(frame.things))
    return Clause(subject, predicate, tense, negated, question, _time_for(rng, tense, adjective=False))


def _pronoun(zh: str) -> Person:
    return next(person for person in PRONOUNS if person.zh == zh)


#: Clauses always in the corpus: the headline and one of each construction the tests check by hand.
ANCHORS = (
    Clause(_pronoun("我"), VerbPredicate(LOVE, person=_pronoun("你"))),
    Clause(_pronoun("他"), VerbPredicate(LOVE, person=_pronoun("她"))),
    Clause(_pronoun("他"), VerbPredicate(EAT, thing=APPLE), "past", time=YESTERDAY),
    Clause(_pronoun("你"), VerbPredicate(LOVE, person=_pronoun("我")), question=True),
    Clause(_pronoun("他"), VerbPredicate(LIKE, thing=CAT), question=True),
    Clause(_pronoun("你"), VerbPredicate(WATCH, thing=MOVIE), "past", question=True, time=YESTERDAY),
    Clause(_pronoun("我"), VerbPredicate(READ, thing=BOOK), "past", negated=True),
    Clause(_pronoun("我"), VerbPredicate(HAVE, thing=BOOK, count=3)),
    Clause(_pronoun("她"), VerbPredicate(HAVE, thing=CAT, count=1)),
    Clause(_pronoun("他"), AdjectivePredicate("高", "tall")),
    Clause(_pronoun("我们"), VerbPredicate(HELP, person=_pronoun("他们")), "future", time=TOMORROW),
    Clause(_pronoun("他们"), VerbPredicate(LIKE, thing=COFFEE), negated=True),
    Clause(_pronoun("我"), AdjectivePredicate("累", "tired"), "past", time=YESTERDAY),
)


def generate(seed: int = 0, size: int = DEFAULT_SIZE) -> list[tuple[str, str]]:
    """``size`` distinct ``(chinese, english)`` pairs, a pure function of ``seed``, in random order.

    The ANCHORS (among them 我爱你。 -> I love you.) are always included. Raises RuntimeError if the grammar
    ever rendered one Chinese sentence two ways (it must not: the mapping is a function).
    """
    if size < len(ANCHORS):
        raise ValueError(f"size must be at least {len(ANCHORS)} (the anchor sentences), got {size}")
    rng = random.Random(f"qkv.data.demo:{seed}")
    translation: dict[str, str] = {}

    def add(source: str, target: str) -> None:
        known = translation.setdefault(source, target)
        if known != target:
            raise RuntimeError(f"demo grammar bug: {source!r} renders as both {known!r} and {target!r}")

    for clause in ANCHORS:
        add(render_zh(clause), render_en(clause))
    attempts = 0
    while len(translation) < size:
        attempts += 1
        if attempts > 50 * size:
            raise RuntimeError(f"the demo grammar yields fewer than {size} distinct sentences; ask for fewer")
        clause = sample_clause(rng)
        punctuated = clause.question or rng.random() >= UNPUNCTUATED_SHARE
        add(render_zh(clause, punctuated=punctuated), render_en(clause))
    pairs = list(translation.items())
    rng.shuffle(pairs)
    return pairs


def splits(
    seed: int = 0, held_out: int = DEFAULT_HELD_OUT, size: int = DEFAULT_SIZE
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(train, held_out)``: the :func:`generate` pairs, ``held_out`` of them set apart.

    Pairs are held out in whole groups of one English sentence (你/你们, 我爱你/我爱你。 share theirs), so no
    held-out source and no held-out target occurs in train. The headline's groups (:data:`HEADLINE_GROUP`:
    我爱你, 我爱你。, 我爱你们。, 我爱你吗？, ...) are always among the held-out ones, so the demo's
    ``我爱你 -> I love you.`` is a sentence the model never saw: it has to compose it from 我爱她, 他爱你,
    我不爱你, ... Raises ValueError if ``held_out`` is too small for the headline's groups.
    """
    pairs = generate(seed, size)
    if not 0 <= held_out < len(pairs) // 2:
        raise ValueError(f"held_out must be in [0, {len(pairs) // 2}), got {held_out}")
    groups: dict[str, list[tuple[str, str]]] = {}
    for pair in pairs:
        groups.setdefault(pair[1], []).append(pair)
    chosen = {target for target in HEADLINE_GROUP if target in groups}
    count = sum(len(groups[target]) for target in chosen)
    if count > held_out:
        raise ValueError(
            f"held_out={held_out} is smaller than the headline's {count} pairs, which are always held out"
        )
    targets = [target for target in groups if target not in HEADLINE_GROUP]
    random.Random(f"qkv.data.demo.splits:{seed}").shuffle(targets)
    for target in targets:
        if count == held_out:
            break
        if count + len(groups[target]) <= held_out:
            chosen.add(target)
            count += len(groups[target])
    train = [pair for pair in pairs if pair[1] not in chosen]
    heldout = [pair for pair in pairs if pair[1] in chosen]
    return train, heldout


def write_tsv(path: str | os.PathLike[str], pairs: Sequence[tuple[str, str]]) -> None:
    """Write ``(chinese, english)`` pairs as ``English<TAB>Chinese`` lines (the shared cmn-eng layout).

    Read them back for zh->en with ``read_tsv(path, src_col=2, tgt_col=1)``. Written to a temporary file
    beside ``path`` and renamed, so a reader never sees half a file.
    """
    target = Path(path)
    for chinese, english in pairs:
        if any(c in text for text in (chinese, english) for c in "\t\n\r"):
            raise ValueError(f"pair {(chinese, english)!r} contains a tab or newline; it cannot go in a TSV")
    write_file(target, "".join(f"{english}\t{chinese}\n" for chinese, english in pairs))
