"""Translation quality through sacreBLEU: corpus BLEU and chrF, with their signature strings.

The tokenization follows the target language, as sacreBLEU recommends: ``13a`` for English (and other
space-separated languages), ``zh`` for Chinese (with 13a a Chinese sentence is one "word" and BLEU is
close to 0). ``flores200``/``spm`` download a model when built and are not offered (qkv runs offline).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sacrebleu.metrics.bleu import BLEU
from sacrebleu.metrics.chrf import CHRF

Tokenize = Literal["13a", "zh", "intl", "char", "none"]


@dataclass(frozen=True)
class Scores:
    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str
    sentences: int

    def report(self) -> str:
        return (
            f"BLEU = {self.bleu:.2f}  ({self.bleu_signature})\n"
            f"chrF = {self.chrf:.2f}  ({self.chrf_signature})\n"
            f"sentences = {self.sentences:,}"
        )


def _is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf" or "\uf900" <= ch <= "\ufaff"


def guess_tokenize(references: Sequence[str]) -> Tokenize:
    """``zh`` when more than a third of the references' non-space characters are Chinese, else ``13a``."""
    text = "".join(references[:2000]).replace(" ", "")
    if not text:
        return "13a"
    share = sum(_is_cjk(ch) for ch in text) / len(text)
    return "zh" if share > 1 / 3 else "13a"


def score(
    hypotheses: Sequence[str], references: Sequence[str], *, tokenize: Tokenize | None = None
) -> Scores:
    """Corpus BLEU and chrF of ``hypotheses`` against one reference each.

    Different numbers of hypotheses and references are an error (sacreBLEU's API would silently score
    only the shorter list).
    """
    if len(hypotheses) != len(references):
        raise ValueError(
            f"{len(hypotheses):,} hypotheses but {len(references):,} references; each hypothesis needs "
            "exactly one reference line"
        )
    tok = tokenize or guess_tokenize(references)
    bleu = BLEU(tokenize=tok)
    chrf = CHRF()
    refs = [list(references)]
    b = bleu.corpus_score(list(hypotheses), refs)
    c = chrf.corpus_score(list(hypotheses), refs)
    return Scores(b.score, c.score, str(bleu.get_signature()), str(chrf.get_signature()), len(hypotheses))
