"""Alignment error rate of `qkv translate --align` per decoder layer, on the demo corpus, against gold
word alignments derived from the demo grammar.

Every demo sentence is a :class:`~qkv.data.demo_grammar.Clause` rendered in Chinese and English, so which
English word translates which Chinese character is known: this script renders each clause a second time,
part by part, with a label on every part (subject, verb, object, number, measure word, time word, 会 / will,
不 / not, ...) and links the parts that carry the same label. It checks that its rendering is exactly the
grammar's (:func:`~qkv.data.demo_grammar.render_zh` and ``render_en``) and that its words are
:func:`qkv.align.words`'s. The links are, over words (each Chinese character is one):

- sure: subject, object and noun phrases (我们 - we, 我的朋友 - my friend: 我的 - my, 朋友 - friend), the
  verb (its first English word: 等 - wait), adjectives, numbers (三 - three), things (书 - books, 杯 - cup
  and 茶 - tea in "cup of tea"), time words, 会 - will, 不 - not, 没有 - did and not, 。 - . and ？ - ?;
- possible: what the other language marks elsewhere or not at all: a verb's particle (等 - for), 了 - a past
  verb form and question "Did", a measure word - its noun (本 - books), 吗 - a question's auxiliary
  ("Do", "Will"), 很 and 不 - a form of "be", 会 - "be" in "will be", 不 - "do"/"does" of "do not", 吗 - "?".

A "." without 。 in Chinese (a tenth of the statements) has no gold link. The alignment error rate
(Och & Ney 2003) is computed over the whole set: 1 - (|A&S| + |A&P|) / (|A| + |S|). The alignments A are
:func:`qkv.align.align` of each Chinese sentence and its *reference* English (teacher-forced), as AER is
measured for fairseq and Garg et al. (2019), with each decoder layer's head average (what --align reads);
the diagonal (output word j linked to the source word at the same relative position) is the baseline.
AER is given for all the sentences and for those not in the demo's training split, with the precision of
the links (the share that are sure or possible), also without each sentence's final punctuation mark.

    .venv/bin/qkv demo --out /tmp/demo-check          # about 3 minutes (500 steps) on 2 cores
    .venv/bin/python benchmarks/alignment_error.py --model /tmp/demo-check --sentences 500
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from qkv.align import align, alignment_error_rate, words
from qkv.data import demo
from qkv.data.demo_grammar import (
    _POSSESSIVES,
    NOUN_PHRASES,
    NUMBERS,
    NUMBERS_EN,
    AdjectivePredicate,
    Clause,
    Person,
    VerbPredicate,
    _be,
    render_en,
    render_zh,
)
from qkv.models import saved
from qkv.models.seq2seq import Transformer
from qkv.translator import Translator

Link = tuple[int, int]


@dataclass(frozen=True)
class EnglishWord:
    """An English word and the labels of the Chinese parts it is surely / possibly a translation of."""

    text: str
    sure: frozenset[str] = frozenset()
    possible: frozenset[str] = frozenset()


def _en(text: str, sure: str | set[str] = frozenset(), possible: set[str] | None = None) -> EnglishWord:
    return EnglishWord(text, frozenset({sure} if isinstance(sure, str) else sure), frozenset(possible or ()))


def _person_zh(person: Person, label: str) -> list[tuple[str, str]]:
    if person in NOUN_PHRASES:  # 我的朋友: owner and noun
        owner = next(
            zh for zh, en in _POSSESSIVES if person.zh.startswith(zh) and person.subject.startswith(en + " ")
        )
        return [(owner, f"{label}-owner"), (person.zh[len(owner) :], f"{label}-noun")]
    return [(person.zh, label)]


def _person_en(person: Person, label: str, form: str) -> list[EnglishWord]:
    if person in NOUN_PHRASES:
        owner, noun = form.split(" ")
        return [_en(owner, f"{label}-owner"), _en(noun, f"{label}-noun")]
    return [_en(form, label)]


def _verb_words(form: str, possible: set[str]) -> list[EnglishWord]:
    """A verb form: its first word surely the verb, a particle (wait *for*) possibly."""
    first, *rest = form.split(" ")
    return [_en(first, "verb", possible), *(_en(w, set(), {"verb"}) for w in rest)]


def _object_zh(predicate: VerbPredicate) -> list[tuple[str, str]]:
    if predicate.person is not None:
        return _person_zh(predicate.person, "object")
    assert predicate.thing is not None
    if predicate.count:
        return [(NUMBERS[predicate.count - 1], "number"), (predicate.thing.measure, "measure"),
                (predicate.thing.zh, "thing")]  # fmt: skip
    return [(predicate.thing.zh, "thing")]


def _object_en(predicate: VerbPredicate) -> list[EnglishWord]:
    if predicate.person is not None:
        return _person_en(predicate.person, "object", predicate.person.object)
    thing = predicate.thing
    assert thing is not None
    if not predicate.count:
        return [_en(w, "thing") for w in thing.generic.split(" ")]
    noun = thing.one if predicate.count == 1 else thing.many
    found = [_en(NUMBERS_EN[predicate.count - 1], "number")]
    if " of " in noun:  # a cup of tea: the measure word is "cup"
        container, _, drink = noun.partition(" of ")
        return [*found, _en(container, "measure"), _en("of", set(), {"measure"}), _en(drink, "thing")]
    return [*found, _en(noun, "thing", {"measure"})]


def gold(clause: Clause, *, punctuated: bool) -> tuple[str, str, list[Link], list[Link]]:
    """``(chinese, english, sure, possible)`` of a clause: the grammar's two sentences and their gold links
    ``(source word, target word)`` over :func:`qkv.align.words`. Mirrors render_zh / render_en part by
    part (and checks that it does)."""
    zh: list[tuple[str, str]] = [(clause.time.zh, "time")] if clause.time else []
    zh += _person_zh(clause.subject, "subject")
    predicate = clause.predicate
    subject = _person_en(clause.subject, "subject", clause.subject.subject)
    if isinstance(predicate, AdjectivePredicate):
        if clause.tense == "future":
            zh += [("不", "not"), ("会", "will")] if clause.negated else [("会", "will"), ("很", "very")]
        else:
            zh += [("不", "not")] if clause.negated else [("很", "very")]
        zh.append((predicate.zh, "adjective"))
        be_links = {"very", "not", "will"}
        if clause.tense == "future":
            will, be = _en("will", "will", {"question"}), _en("be", set(), be_links)
            if clause.question:
                en = [will, *subject, be]
            else:
                en = [*subject, will, *([_en("not", "not")] if clause.negated else []), be]
        else:
            be = _en(_be(clause.subject.agreement, clause.tense), set(), be_links | {"question"})
            en = [be, *subject] if clause.question else [*subject, be]
            en += [_en("not", "not")] if clause.negated else []
        en.append(_en(predicate.en, "adjective"))
    else:
        verb = predicate.verb
        if clause.tense == "present":
            zh += [("不", "not")] if clause.negated else []
            zh.append((verb.zh, "verb"))
        elif clause.tense == "past":
            zh += (
                [("没有", "did-not"), (verb.zh, "verb")]
                if clause.negated
                else [(verb.zh, "verb"), ("了", "past")]
            )
        else:
            zh += [("不", "not"), ("会", "will")] if clause.negated else [("会", "will")]
            zh.append((verb.zh, "verb"))
        zh += _object_zh(predicate)
        obj = _object_en(predicate)
        if clause.tense == "future":
            aux = _en("will", "will", {"question"})
        elif clause.tense == "past":
            aux = _en("did", "did-not" if clause.negated else set(), {"past", "question"})
        else:
            aux = _en("does" if clause.subject.agreement == "3s" else "do", set(), {"not", "question"})
        if clause.question:
            en = [aux, *subject, *_verb_words(verb.base, set()), *obj]
        elif clause.negated:
            not_label = "did-not" if clause.tense == "past" else "not"
            en = [*subject, aux, _en("not", not_label), *_verb_words(verb.base, set()), *obj]
        elif clause.tense == "future":
            en = [*subject, aux, *_verb_words(verb.base, set()), *obj]
        else:
            form = (
                verb.past
                if clause.tense == "past"
                else verb.third
                if clause.subject.agreement == "3s"
                else verb.base
            )
            en = [*subject, *_verb_words(form, {"past"} if clause.tense == "past" else set()), *obj]
    if clause.time:
        en.append(_en(clause.time.en, "time"))
    if clause.question:
        zh += [("吗", "question"), ("？", "end")]
        en.append(_en("?", "end", {"question"}))
    else:
        zh += [("。", "end")] if punctuated else []
        en.append(_en(".", "end"))

    chinese = "".join(part for part, _ in zh)
    sentence = " ".join(w.text for w in en[:-1]) + en[-1].text
    english = sentence[0].upper() + sentence[1:]
    if chinese != render_zh(clause, punctuated=punctuated) or english != render_en(clause):
        raise AssertionError(f"the gold rendering drifted from the grammar: {chinese} / {english}")
    labels = [label for part, label in zh for _ in part]  # one per Chinese character
    if [chinese[s:e] for s, e in words(chinese)] != list(chinese):
        raise AssertionError(f"{chinese}: expected one word per character")
    if [english[s:e] for s, e in words(english)] != [english[0].upper() + en[0].text[1:]] + [
        w.text for w in en[1:]
    ]:
        raise AssertionError(f"{english}: words differ from the gold rendering's")
    sure = [(i, j) for j, w in enumerate(en) for i, label in enumerate(labels) if label in w.sure]
    possible = [(i, j) for j, w in enumerate(en) for i, label in enumerate(labels) if label in w.possible]
    return chinese, english, sure, possible


def diagonal(source_words: int, target_words: int) -> list[Link]:
    """The position baseline: output word j links to the source word at the same relative position."""
    return [(min(source_words - 1, round(j * source_words / target_words)), j) for j in range(target_words)]


def corpus_aer(found: list[list[Link]], sure: list[list[Link]], possible: list[list[Link]]) -> float:
    """AER over a whole set: each sentence's links made distinct by its index."""

    def tag(links: list[list[Link]]) -> list[Link]:
        return [(k * 1000 + i, k * 1000 + j) for k, sentence in enumerate(links) for i, j in sentence]

    return alignment_error_rate(tag(found), tag(sure), tag(possible))


def precision(
    found: list[list[Link]], sure: list[list[Link]], possible: list[list[Link]], *, last: bool
) -> float:
    """The share of found links that are gold (sure or possible); ``last=False`` leaves out each
    sentence's last output word (its final punctuation)."""
    right = total = 0
    for links, s, p in zip(found, sure, possible, strict=True):
        gold_links = set(s) | set(p)
        end = max((j for _, j in links), default=-1)
        kept = [link for link in links if last or link[1] != end]
        right += sum(link in gold_links for link in kept)
        total += len(kept)
    return right / max(total, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a demo run; trained with `qkv demo` if missing")
    p.add_argument(
        "--sentences", type=int, default=500, help="clauses sampled from the grammar (default 500)"
    )
    p.add_argument("--seed", type=int, default=1, help="sampling seed of the clauses (default 1)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.model.exists():
        subprocess.run([sys.executable, "-m", "qkv", "demo", "--out", str(args.model), "--quiet"], check=True)
    loaded = saved.load(args.model)
    model = loaded.model
    assert isinstance(model, Transformer)
    translator = Translator(model, loaded.src_tokenizer, loaded.tgt_tokenizer)
    train_sources = {zh for zh, _ in demo.splits()[0]}

    rng = random.Random(f"alignment_error:{args.seed}")
    cases = []
    seen: set[str] = set()
    while len(cases) < args.sentences:
        clause = demo.sample_clause(rng)
        punctuated = clause.question or rng.random() >= demo.UNPUNCTUATED_SHARE
        case = gold(clause, punctuated=punctuated)
        if case[0] not in seen:
            seen.add(case[0])
            cases.append(case)
    unseen = [k for k, case in enumerate(cases) if case[0] not in train_sources]

    layers = model.config.decoder_layers
    found: dict[str, list[list[Link]]] = {f"layer {n}": [] for n in range(layers)}
    found["diagonal"] = []
    for chinese, english, _, _ in cases:
        source_ids = translator.source_ids([chinese])[0]
        output_ids = loaded.tgt_tokenizer.encode(english)
        for n in range(layers):
            alignment = align(
                model, loaded.src_tokenizer, loaded.tgt_tokenizer, chinese, source_ids, output_ids, layer=n
            )
            found[f"layer {n}"].append(alignment.links)
        found["diagonal"].append(diagonal(len(chinese), len(words(english))))

    sure = [case[2] for case in cases]
    possible = [case[3] for case in cases]
    print(f"model {args.model}: {layers} decoder layers; {len(cases)} sentences sampled from the demo grammar "
          f"(seed {args.seed}), {len(unseen)} of them not in the training split")  # fmt: skip
    print(f"gold: {sum(map(len, sure))} sure and {sum(map(len, possible))} possible links")
    print(
        f"{'alignment':<12} {'AER all':>8} {'AER unseen':>11} {'precision':>10} {'without final punct.':>21}"
    )
    for name, links in found.items():
        every = corpus_aer(links, sure, possible)
        held = corpus_aer(
            [links[k] for k in unseen], [sure[k] for k in unseen], [possible[k] for k in unseen]
        )
        right = precision(links, sure, possible, last=True)
        inner = precision(links, sure, possible, last=False)
        print(f"{name:<12} {every:>8.3f} {held:>11.3f} {right:>10.3f} {inner:>21.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
