"""The grammar and lexicon of the demo corpus: a sentence as a :class:`Clause`, rendered in Chinese and English.

A clause is built once from slots (subject, predicate, tense, negation, question, time word) and rendered
by :func:`render_zh` and :func:`render_en`, so each Chinese sentence has exactly one English translation.
``qkv.data.demo`` samples clauses from this grammar; see its docstring for what the grammar covers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Tense = Literal["present", "past", "future"]
Agreement = Literal["I", "3s", "plural"]  # "plural" also covers "you": are / were / do / love


# --- lexicon -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    """Someone who can be a subject or an object: 他 -> he / him."""

    zh: str
    subject: str
    object: str
    agreement: Agreement
    pronoun_person: int = 0  # 1, 2 or 3 for pronouns, 0 for noun phrases (used to avoid "I love me")


PRONOUNS = (
    Person("我", "I", "me", "I", 1),
    Person("你", "you", "you", "plural", 2),
    Person("他", "he", "him", "3s", 3),
    Person("她", "she", "her", "3s", 3),
    Person("我们", "we", "us", "plural", 1),
    Person("你们", "you", "you", "plural", 2),
    Person("他们", "they", "them", "plural", 3),
)
_POSSESSIVES = (("我的", "my"), ("你的", "your"), ("他的", "his"), ("她的", "her"), ("我们的", "our"),
                ("你们的", "your"), ("他们的", "their"))  # fmt: skip
_RELATIONS = (("朋友", "friend"), ("妈妈", "mother"), ("爸爸", "father"), ("哥哥", "brother"),
              ("姐姐", "sister"), ("老师", "teacher"))  # fmt: skip
NOUN_PHRASES = tuple(
    Person(zh_owner + zh_noun, f"{en_owner} {en_noun}", f"{en_owner} {en_noun}", "3s")
    for zh_owner, en_owner in _POSSESSIVES
    for zh_noun, en_noun in _RELATIONS
)


@dataclass(frozen=True)
class Thing:
    """An object noun: generic form for bare use, and a measure word with singular/plural for counting."""

    zh: str
    generic: str  # 我喜欢猫 -> "cats"; 我喝茶 -> "tea"
    one: str  # 一只猫 -> "cat"; 一杯茶 -> "cup of tea"
    many: str  # 三只猫 -> "cats"; 三杯茶 -> "cups of tea"
    measure: str  # 只, 杯; "" when it is not counted in this corpus


def _countable(zh: str, one: str, many: str, measure: str) -> Thing:
    return Thing(zh, many, one, many, measure)


BOOK = _countable("书", "book", "books", "本")
MAGAZINE = _countable("杂志", "magazine", "magazines", "本")
NEWSPAPER = _countable("报纸", "newspaper", "newspapers", "份")
CAT = _countable("猫", "cat", "cats", "只")
DOG = _countable("狗", "dog", "dogs", "只")
BIRD = _countable("鸟", "bird", "birds", "只")
APPLE = _countable("苹果", "apple", "apples", "个")
EGG = _countable("鸡蛋", "egg", "eggs", "个")
BANANA = _countable("香蕉", "banana", "bananas", "根")
FISH = _countable("鱼", "fish", "fish", "条")
LETTER = _countable("信", "letter", "letters", "封")
FLOWER = _countable("花", "flower", "flowers", "朵")
CAR = _countable("车", "car", "cars", "辆")
PEN = _countable("笔", "pen", "pens", "支")
MOVIE = _countable("电影", "movie", "movies", "部")
TEA = Thing("茶", "tea", "cup of tea", "cups of tea", "杯")
COFFEE = Thing("咖啡", "coffee", "cup of coffee", "cups of coffee", "杯")
WATER = Thing("水", "water", "glass of water", "glasses of water", "杯")
MILK = Thing("牛奶", "milk", "glass of milk", "glasses of milk", "杯")
RICE = Thing("米饭", "rice", "bowl of rice", "bowls of rice", "碗")
BREAD = Thing("面包", "bread", "", "", "")
TV = Thing("电视", "TV", "", "", "")
MUSIC = Thing("音乐", "music", "", "", "")

FOODS = (APPLE, EGG, BANANA, FISH, RICE, BREAD)
DRINKS = (TEA, COFFEE, WATER, MILK)
READING = (BOOK, MAGAZINE, NEWSPAPER)
ANIMALS = (CAT, DOG, BIRD)
THINGS = (*READING, *ANIMALS, *FOODS, *DRINKS, LETTER, FLOWER, CAR, PEN, MOVIE, TV, MUSIC)
COUNTABLE = tuple(thing for thing in THINGS if thing.measure)
BUYABLE = (*READING, *FOODS, *DRINKS, FLOWER, CAR, PEN)

NUMBERS = ("一", "两", "三", "四", "五", "六", "七", "八", "九", "十")
NUMBERS_EN = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclass(frozen=True)
class Verb:
    """A verb in the forms English needs: love / loves / loved."""

    zh: str
    base: str
    third: str  # third person singular present
    past: str


@dataclass(frozen=True)
class Frame:
    """A verb, what it takes as object, and the tenses it is used in here.

    ``counted`` frames take a number + measure word + thing (我有三本书) and are never negated.
    Stative verbs (爱, 喜欢, 认识, 有, 要) stay in the present: 我爱了你 is not what a learner says.
    """

    verb: Verb
    persons: bool  # takes people (pronouns and noun phrases) as objects
    things: tuple[Thing, ...]
    tenses: tuple[Tense, ...]
    counted: bool = False


LOVE = Verb("爱", "love", "loves", "loved")
LIKE = Verb("喜欢", "like", "likes", "liked")
KNOW = Verb("认识", "know", "knows", "knew")
MISS = Verb("想", "miss", "misses", "missed")
HELP = Verb("帮助", "help", "helps", "helped")
WAIT = Verb("等", "wait for", "waits for", "waited for")
LOOK_FOR = Verb("找", "look for", "looks for", "looked for")
SEE = Verb("看见", "see", "sees", "saw")
EAT = Verb("吃", "eat", "eats", "ate")
DRINK = Verb("喝", "drink", "drinks", "drank")
READ = Verb("看", "read", "reads", "read")
WATCH = Verb("看", "watch", "watches", "watched")
BUY = Verb("买", "buy", "buys", "bought")
WRITE = Verb("写", "write", "writes", "wrote")
LISTEN = Verb("听", "listen to", "listens to", "listened to")
HAVE = Verb("有", "have", "has", "had")
WANT = Verb("要", "want", "wants", "wanted")

ALL_TENSES: tuple[Tense, ...] = ("present", "past", "future")
FRAMES = (
    Frame(LOVE, True, (), ("present",)),
    Frame(LIKE, True, THINGS, ("present",)),
    Frame(KNOW, True, (), ("present",)),
    Frame(MISS, True, (), ("present", "future")),
    Frame(HELP, True, (), ALL_TENSES),
    Frame(WAIT, True, (), ALL_TENSES),
    Frame(LOOK_FOR, True, ANIMALS, ALL_TENSES),
    Frame(SEE, True, (), ALL_TENSES),
    Frame(EAT, False, FOODS, ALL_TENSES),
    Frame(DRINK, False, DRINKS, ALL_TENSES),
    Frame(READ, False, READING, ALL_TENSES),
    Frame(WATCH, False, (MOVIE, TV), ALL_TENSES),
    Frame(BUY, False, BUYABLE, ALL_TENSES),
    Frame(WRITE, False, (LETTER, BOOK), ALL_TENSES),
    Frame(LISTEN, False, (MUSIC,), ALL_TENSES),
    Frame(HAVE, False, COUNTABLE, ("present",), counted=True),
    Frame(WANT, False, (*FOODS[:-1], *DRINKS), ("present",), counted=True),  # bread is not counted
    Frame(BUY, False, tuple(t for t in BUYABLE if t.measure), ("past", "future"), counted=True),
    Frame(SEE, False, (*ANIMALS, CAR, FLOWER), ("past",), counted=True),
)

ADJECTIVES = (("高", "tall"), ("矮", "short"), ("忙", "busy"), ("累", "tired"), ("饿", "hungry"),
              ("渴", "thirsty"), ("高兴", "happy"), ("聪明", "smart"), ("漂亮", "beautiful"),
              ("生气", "angry"), ("冷", "cold"), ("老", "old"), ("年轻", "young"))  # fmt: skip


@dataclass(frozen=True)
class TimeWord:
    zh: str
    en: str


YESTERDAY = TimeWord("昨天", "yesterday")
TODAY = TimeWord("今天", "today")
TOMORROW = TimeWord("明天", "tomorrow")


# --- clauses and their two renderings ----------------------------------------------------------------------


@dataclass(frozen=True)
class VerbPredicate:
    """Verb + object: a person, a bare thing, or (``count`` > 0) a counted thing."""

    verb: Verb
    person: Person | None = None
    thing: Thing | None = None
    count: int = 0


@dataclass(frozen=True)
class AdjectivePredicate:
    """很 + adjective: 他很高 -> he is tall."""

    zh: str
    en: str


@dataclass(frozen=True)
class Clause:
    """One sentence of the grammar. Questions are never negated (我不爱你吗 is left out)."""

    subject: Person
    predicate: VerbPredicate | AdjectivePredicate
    tense: Tense = "present"
    negated: bool = False
    question: bool = False
    time: TimeWord | None = None


def _object_zh(predicate: VerbPredicate) -> str:
    if predicate.person is not None:
        return predicate.person.zh
    assert predicate.thing is not None
    if predicate.count:
        return NUMBERS[predicate.count - 1] + predicate.thing.measure + predicate.thing.zh
    return predicate.thing.zh


def _object_en(predicate: VerbPredicate) -> str:
    if predicate.person is not None:
        return predicate.person.object
    assert predicate.thing is not None
    if predicate.count:
        noun = predicate.thing.one if predicate.count == 1 else predicate.thing.many
        return f"{NUMBERS_EN[predicate.count - 1]} {noun}"
    return predicate.thing.generic


def render_zh(clause: Clause, *, punctuated: bool = True) -> str:
    """The Chinese sentence: [time] subject [negation/aspect] predicate [吗] + 。/？ (no spaces)."""
    parts = [clause.time.zh] if clause.time else []
    parts.append(clause.subject.zh)
    predicate = clause.predicate
    if isinstance(predicate, AdjectivePredicate):
        if clause.tense == "future":
            parts.append("不会" if clause.negated else "会很")
        else:
            parts.append("不" if clause.negated else "很")
        parts.append(predicate.zh)
    else:
        if clause.tense == "present":
            parts += ["不"] if clause.negated else []
            parts.append(predicate.verb.zh)
        elif clause.tense == "past":
            parts += ["没有", predicate.verb.zh] if clause.negated else [predicate.verb.zh, "了"]
        else:
            parts += ["不会" if clause.negated else "会", predicate.verb.zh]
        parts.append(_object_zh(predicate))
    if clause.question:
        if clause.negated:
            raise ValueError("negated questions are not part of the demo grammar")
        return "".join(parts) + "吗？"
    return "".join(parts) + ("。" if punctuated else "")


def _be(agreement: Agreement, tense: Tense) -> str:
    if tense == "past":
        return "were" if agreement == "plural" else "was"
    return {"I": "am", "3s": "is", "plural": "are"}[agreement]


def render_en(clause: Clause) -> str:
    """The English sentence, capitalised, with its time word at the end and a final . or ?."""
    subject, predicate = clause.subject, clause.predicate
    agreement = subject.agreement
    if isinstance(predicate, AdjectivePredicate):
        complement = predicate.en
        if clause.tense == "future":
            words = ["will", subject.subject, "be"] if clause.question else [subject.subject, "will"]
            words += [] if clause.question else (["not", "be"] if clause.negated else ["be"])
        else:
            be = _be(agreement, clause.tense)
            words = [be, subject.subject] if clause.question else [subject.subject, be]
            words += ["not"] if clause.negated else []
    else:
        complement = f"{predicate.verb.base} {_object_en(predicate)}"
        if clause.tense == "future":
            aux = "will"
        elif clause.tense == "past":
            aux = "did"
        else:
            aux = "does" if agreement == "3s" else "do"
        if clause.question:
            words = [aux, subject.subject]
        elif clause.negated:
            words = [subject.subject, aux, "not"]
        elif clause.tense == "future":
            words = [subject.subject, "will"]
        else:  # an affirmative statement carries tense and agreement on the verb itself
            verb = predicate.verb
            form = verb.past if clause.tense == "past" else (verb.third if agreement == "3s" else verb.base)
            complement = f"{form} {_object_en(predicate)}"
            words = [subject.subject]
    words.append(complement)
    if clause.time:
        words.append(clause.time.en)
    sentence = " ".join(words) + ("?" if clause.question else ".")
    return sentence[0].upper() + sentence[1:]
