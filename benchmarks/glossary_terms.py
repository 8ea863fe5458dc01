"""Terminology constraints on real data: how often a glossary's terms are used, what BLEU does, and what
constrained beam search costs against plain beam 4.

On the first ``--sentences`` pairs of a dev set (cmn-eng: column 2 Chinese, column 1 English), a glossary
of ``--terms`` pairs is drawn from the references:

1. candidate pairs are a Chinese character n-gram (2 to 4 characters, not starting or ending with a
   function character such as 的 or 了) and an English word (3+ letters, not a function word) that
   occur together in some dev pair (source / reference) of the set;
2. each is scored by its Dice coefficient over the *training* corpus (``--train``): 2 c(zh, en) / (c(zh)
   + c(en)), sentence counts, at least 5 pairs together, Dice >= 0.3;
3. pairs are taken best Dice first (to two decimals; then the longer Chinese term), each Chinese term
   and each English term once, no Chinese term inside another, until ``--terms``; the glossary is written to ``--out`` (a file for `qkv translate --glossary`).

Then the same sentences are translated with plain beam 4 and with the glossary (beam 4, each matched term
a lexical constraint: qkv.glossary and Translator.translations, the code path of `qkv translate
--glossary`). Reported: the term use rate (of the (sentence, term) matches, the share whose output holds
the English term as a whole word, exact case; the references' own rate is the ceiling, since a reference
may say the thing another way), BLEU and chrF (sacreBLEU) on all sentences and on those with a term, and
the decoding time of each (interleaved runs, the fastest of ``--repeats``; time per sentence).

    .venv/bin/python benchmarks/glossary_terms.py --model /work/runs/zh-en \\
        --data /work/shared/data/cmn-eng/dev.tsv --train /work/shared/data/cmn-eng/train.tsv \\
        --sentences 300 --terms 50 --out /tmp/glossary.tsv
    .venv/bin/python benchmarks/glossary_terms.py --model /tmp/demo-check --demo --sentences 300 \
        --out /tmp/glossary-demo.tsv     # the demo model (qkv demo) on its held-out pairs
"""

from __future__ import annotations

import argparse
import csv
import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import sacrebleu
import torch

from qkv.data import demo
from qkv.decode import SearchConfig
from qkv.glossary import Glossary
from qkv.models import saved
from qkv.translator import Translator

_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]+")
_WORD = re.compile(r"[A-Za-z]+")
FUNCTION_WORDS = frozenset(
    "the and you your are was were his her him she they them their this that these those there here what "
    "when where which who whom why how not don didn doesn isn aren wasn can could would should will shall "
    "have has had does did for from with into about than then very too also just some any all one two "
    "our ours its it's myself yourself himself herself itself out over again more most much many such own "
    "been being both each few off only same other".split()
)


def read_pairs(path: Path, count: int | None) -> list[tuple[str, str]]:
    """``(chinese, english)`` pairs of an ``English<TAB>Chinese`` file, the first ``count``."""
    pairs: list[tuple[str, str]] = []
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 2:
                pairs.append((row[1], row[0]))
            if count is not None and len(pairs) >= count:
                break
    return pairs


# Function characters (particles, pronouns, 一/这/那): an n-gram that starts or ends with one is a piece
# of a phrase (的勇, 偷了), not a term.
_FUNCTION_CHARS = frozenset("的了着過过是在我你他她它们們很不吗嗎呢吧一这這那个個和也都就要有")


def zh_terms(text: str) -> set[str]:
    """Every 2- to 4-character n-gram of the runs of Chinese characters that neither starts nor ends
    with a function character."""
    found: set[str] = set()
    for run in _HAN.findall(text):
        for n in (2, 3, 4):
            found.update(run[k : k + n] for k in range(len(run) - n + 1))
    return {z for z in found if z[0] not in _FUNCTION_CHARS and z[-1] not in _FUNCTION_CHARS}


def en_terms(text: str) -> set[str]:
    """The content words (3+ letters, not a function word), as written."""
    return {w for w in _WORD.findall(text) if len(w) >= 3 and w.lower() not in FUNCTION_WORDS}


def has_word(text: str, term: str) -> bool:
    """Whether ``term`` occurs in ``text`` as a whole word (exact case)."""
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(term)}(?![A-Za-z0-9])", text) is not None


def draw_glossary(
    dev: Sequence[tuple[str, str]], train: Sequence[tuple[str, str]], terms: int
) -> list[tuple[str, str, float]]:
    """``(chinese term, english term, dice)``, drawn as the module docstring says."""
    candidates: set[tuple[str, str]] = set()
    for zh, en in dev:
        candidates.update((z, e) for z in zh_terms(zh) for e in en_terms(en))
    wanted_zh = {z for z, _ in candidates}
    wanted_en = {e for _, e in candidates}
    zh_count: Counter[str] = Counter()
    en_count: Counter[str] = Counter()
    together: Counter[tuple[str, str]] = Counter()
    for zh, en in train:
        zs, es = zh_terms(zh) & wanted_zh, en_terms(en) & wanted_en
        zh_count.update(zs)
        en_count.update(es)
        together.update((z, e) for z in zs for e in es if (z, e) in candidates)
    scored = sorted(
        ((2 * c / (zh_count[z] + en_count[e]), z, e) for (z, e), c in together.items() if c >= 5),
        key=lambda t: (-round(t[0], 2), -len(t[1]), t[1], t[2]),  # the longer of two as good terms
    )
    chosen: list[tuple[str, str, float]] = []
    for dice, z, e in scored:
        if dice < 0.3 or len(chosen) == terms:
            break
        if any(z in c or c in z or e == f for c, f, _ in chosen):
            continue
        chosen.append((z, e, dice))
    return chosen


def term_use(outputs: Sequence[str], sources: Sequence[str], glossary: Glossary) -> tuple[int, int]:
    """(matches whose output holds the term, matches): a match is a glossary term found in a source."""
    used = total = 0
    for source, output in zip(sources, outputs, strict=True):
        for term in glossary.constraints(source):
            total += 1
            used += has_word(output, term)
    return used, total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a zh->en model or run directory")
    p.add_argument("--data", type=Path, help="dev pairs, English<TAB>Chinese")
    p.add_argument("--train", type=Path, help="training pairs, for the term statistics")
    p.add_argument(
        "--demo",
        action="store_true",
        help="instead of --data/--train: the demo corpus's held-out and training pairs",
    )
    p.add_argument("--sentences", type=int, default=300)
    p.add_argument("--terms", type=int, default=50)
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each system, interleaved")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("glossary.tsv"), help="where the glossary is written")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.demo:
        train, held_out = demo.splits()
        dev = held_out[: args.sentences]
    elif args.data is None or args.train is None:
        p.error("give --data and --train, or --demo")
    else:
        dev = read_pairs(args.data, args.sentences)
        train = read_pairs(args.train, None)
    chosen = draw_glossary(dev, train, args.terms)
    args.out.write_text("".join(f"{z}\t{e}\n" for z, e, _ in chosen), encoding="utf-8")
    glossary = Glossary.load(args.out)
    sources = [zh for zh, _ in dev]
    references = [en for _, en in dev]
    constraints = [glossary.constraints(s) for s in sources]
    with_terms = [k for k, c in enumerate(constraints) if c]
    print(
        f"glossary: {len(chosen)} pairs (Dice {chosen[-1][2]:.2f} to {chosen[0][2]:.2f}), written to {args.out}"
    )
    print("  " + ", ".join(f"{z}={e}" for z, e, _ in chosen[:12]) + ", ...")
    print(
        f"{len(dev)} sentences, {len(with_terms)} with a glossary term, {sum(map(len, constraints))} matches"
    )

    loaded = saved.load(args.model)
    translator = Translator(
        loaded.model,
        loaded.src_tokenizer,
        loaded.tgt_tokenizer,
        search=SearchConfig(beam=args.beam),
        batch_size=args.batch_size,
    )
    systems = {
        f"beam {args.beam}": lambda: translator.translations(sources),
        f"beam {args.beam} + glossary": lambda: translator.translations(
            sources, prefixes=[""] * len(sources), constraints=constraints
        ),
    }
    outputs: dict[str, list[str]] = {}
    seconds: dict[str, float] = {name: float("inf") for name in systems}
    for _ in range(args.repeats):
        for name, run in systems.items():
            start = time.perf_counter()
            found = run()
            seconds[name] = min(seconds[name], time.perf_counter() - start)
            outputs[name] = [t.text for t in found]

    used, total = term_use(references, sources, glossary)
    print(f"\nreferences: term use {used}/{total} = {used / max(total, 1):.1%}")
    print(
        f"{'system':<22} {'term use':>14} {'BLEU':>6} {'chrF':>6} {'BLEU w/ term':>13} {'ms/sent':>8} {'time':>6}"
    )
    base = seconds[f"beam {args.beam}"]
    subset_refs = [references[k] for k in with_terms]
    for name, texts in outputs.items():
        used, total = term_use(texts, sources, glossary)
        bleu = sacrebleu.corpus_bleu(texts, [references]).score
        chrf = sacrebleu.corpus_chrf(texts, [references]).score
        subset = sacrebleu.corpus_bleu([texts[k] for k in with_terms], [subset_refs]).score
        ms = 1000 * seconds[name] / len(sources)
        print(
            f"{name:<22} {f'{used}/{total} {used / max(total, 1):.1%}':>14} {bleu:>6.2f} {chrf:>6.2f} "
            f"{subset:>13.2f} {ms:>8.1f} {seconds[name] / base:>5.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
