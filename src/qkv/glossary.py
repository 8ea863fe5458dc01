"""A terminology glossary: source terms and the target terms a translation must use for them.

A glossary file has one entry a line, ``source term<TAB>target term``; blank lines and lines starting with
``#`` are skipped. A source term found in a text makes its target term a lexical constraint for that
text (:meth:`Glossary.constraints`), which :meth:`qkv.translator.Translator.translations` decodes with
constrained beam search.

Matching is exact and case-sensitive, over the text as given. Occurrences are taken longest term first
and may not overlap, so with entries for 苹果 and 苹果汁 the text 苹果汁 asks for the second one only. A
term that starts (or ends) with a letter or digit of a spaced script must start (end) at a word
boundary: "cat" is found in "a cat." but not in "category"; Chinese and Japanese terms match anywhere.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# Letters and digits of scripts written with spaces: a term edge made of one needs a word boundary.
_SPACED_WORD_CHAR = re.compile(r"[^\W_\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


@dataclass(frozen=True)
class Glossary:
    """``entries``: ``(source term, target term)`` pairs, in file order, each source term once."""

    entries: tuple[tuple[str, str], ...]

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Glossary:
        """Read a glossary file. ValueError ``FILE:LINE: what is wrong`` for a line without exactly two
        non-empty tab-separated terms or a source term given twice, ``FILE: not UTF-8`` for bytes that
        are not UTF-8."""
        entries: list[tuple[str, str]] = []
        seen: dict[str, int] = {}
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 (byte {e.start}); save the glossary as UTF-8") from None
        # Lines end at \n only (and a \r before it), as editors count them: str.splitlines would also
        # split at U+2028, U+0085 and others, and the line numbers in errors would drift.
        for number, line in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
            line = line.removesuffix("\r")
            where = f"{path}:{number}"
            if not line.strip() or line.startswith("#"):
                continue
            columns = line.split("\t")
            if len(columns) != 2:
                raise ValueError(
                    f"{where}: expected 2 tab-separated columns (source term, target term), got {len(columns)}"
                )
            source, target = (c.strip() for c in columns)
            if not source or not target:
                side = "source" if not source else "target"
                raise ValueError(f"{where}: the {side} term is empty")
            if source in seen:
                raise ValueError(f"{where}: source term {source!r} is already on line {seen[source]}")
            seen[source] = number
            entries.append((source, target))
        return cls(tuple(entries))

    def matches(self, text: str) -> list[tuple[str, str]]:
        """The entries whose source terms occur in ``text`` by the rules of the module docstring, in the
        order they occur."""
        taken: list[tuple[int, int, int]] = []  # (start, end, entry)
        order = sorted(range(len(self.entries)), key=lambda i: -len(self.entries[i][0]))
        for index in order:
            term = self.entries[index][0]
            start = text.find(term)
            while start >= 0:
                end = start + len(term)
                free = all(end <= s or e <= start for s, e, _ in taken)
                if free and _at_word_edges(text, start, end):
                    taken.append((start, end, index))
                    break
                start = text.find(term, start + 1)
        return [self.entries[i] for _, _, i in sorted(taken)]

    def constraints(self, text: str) -> list[str]:
        """The target terms that ``text`` asks for, each once, in the order their source terms occur."""
        found: list[str] = []
        for _, target in self.matches(text):
            if target not in found:
                found.append(target)
        return found


def _at_word_edges(text: str, start: int, end: int) -> bool:
    """Whether ``text[start:end]`` neither starts nor ends inside a word of a spaced script."""

    def joined(a: int, b: int) -> bool:  # characters a and b both letters/digits of a spaced script
        return 0 <= a and b < len(text) and all(_SPACED_WORD_CHAR.match(text[i]) for i in (a, b))

    return not joined(start - 1, start) and not joined(end - 1, end)
