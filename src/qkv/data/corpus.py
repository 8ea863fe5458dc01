"""Parallel corpora read line by line: every bad line is reported as ``FILE:LINE: reason`` or skipped and counted.

Three layouts are read, all UTF-8:

- TSV: one pair a line, columns separated by tabs (no quoting: a field is the raw text between tabs); the
  source and target columns are chosen by 1-based number, extra columns are ignored. The shared cmn-eng data
  is ``English<TAB>Chinese``, so zh->en reads it with ``src_col=2, tgt_col=1``.
- Parallel: two plain text files aligned line by line (line i of one translates line i of the other).
- JSONL: one JSON object a line, ``{"src": "...", "tgt": "..."}`` (the key names can be changed).

Lines are split on ``b"\\n"`` only (a trailing ``\\r`` of CRLF files is removed). Python's text mode would
also split on a lone ``\\r``, and ``str.splitlines()`` on U+2028 and U+0085, which breaks the alignment of
parallel corpora (FINDINGS.md); here those characters stay inside the line as text. A UTF-8 byte order mark
at the start of line 1 is removed. Each line is decoded strictly as UTF-8.

By default the first bad line raises :class:`CorpusError`; with ``skip_bad=True`` bad lines are skipped and
counted per kind of problem (the keys of ``Corpus.skipped`` are the ``PROBLEM_*`` constants below). Nothing
is dropped silently: a line is either in ``Corpus.pairs`` (with its number in ``Corpus.line_numbers``) or
counted in ``Corpus.skipped``.

Every reader parses lines with :func:`line_pairs`, which also reads byte ranges of a file: ``qkv prepare``
(:mod:`qkv.data.prepare`) reads a corpus that way in parallel, with the same rules and messages.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Literal

StrPath = str | os.PathLike[str]

#: Default limit on the length of one side of a pair, in characters (not bytes, not tokens).
DEFAULT_MAX_CHARS = 1000

# The kinds of problem a line can have: the keys of ``Corpus.skipped``.
PROBLEM_COLUMNS = "too few columns"
PROBLEM_EMPTY = "empty side"
PROBLEM_UTF8 = "invalid UTF-8"
PROBLEM_NUL = "NUL byte"
PROBLEM_TOO_LONG = "too long"
PROBLEM_COUNT_MISMATCH = "line count mismatch"
PROBLEM_JSON = "invalid JSON"
PROBLEM_MISSING_KEY = "missing key"

PROBLEMS = (
    PROBLEM_COLUMNS,
    PROBLEM_EMPTY,
    PROBLEM_UTF8,
    PROBLEM_NUL,
    PROBLEM_TOO_LONG,
    PROBLEM_COUNT_MISMATCH,
    PROBLEM_JSON,
    PROBLEM_MISSING_KEY,
)

_BOM = b"\xef\xbb\xbf"
_SKIP_HINT = "use --skip-bad to skip such lines"


class CorpusError(ValueError):
    """A corpus line that cannot be used; the message reads ``FILE:LINE: reason (what to do)``.

    ``path``, ``line`` (1-based, or None for a whole-file problem) and ``kind`` (a ``PROBLEM_*`` constant,
    or None) are kept as attributes for callers that want them.
    """

    def __init__(self, path: str, line: int | None, reason: str, kind: str | None = None) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.line = line
        self.kind = kind


class LineProblem(Exception):
    """One bad line: what kind of problem and why. :func:`line_pairs` yields it; the reader turns it into
    a CorpusError or a count."""

    def __init__(self, kind: str, reason: str, path: str | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.path = path  # set when the problem lies in a different file than the one being reported


@dataclass
class Corpus:
    """Sentence pairs read from a corpus, the line each came from, and what was skipped.

    ``pairs[i]`` is ``(source, target)`` from line ``line_numbers[i]`` (1-based). ``skipped`` maps a
    ``PROBLEM_*`` kind to the number of lines skipped for it (kinds that did not occur are absent), and
    ``first_skipped`` maps the same kinds to the full ``FILE:LINE: reason`` message of the first such line.
    """

    path: str
    pairs: list[tuple[str, str]] = field(default_factory=list)
    line_numbers: list[int] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    first_skipped: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def sources(self) -> list[str]:
        """The source sides, in file order."""
        return [source for source, _ in self.pairs]

    @property
    def targets(self) -> list[str]:
        """The target sides, in file order."""
        return [target for _, target in self.pairs]

    def report(self) -> str:
        """One short paragraph: pairs read, lines skipped per kind, and where the first of each kind was."""
        return corpus_report(self.path, len(self.pairs), self.skipped, self.first_skipped)

    def _skip(self, kind: str, message: str) -> None:
        self.skipped[kind] = self.skipped.get(kind, 0) + 1
        self.first_skipped.setdefault(kind, message)

    def _reject(self, where: str, number: int, problem: LineProblem, skip_bad: bool) -> None:
        """A bad line: raise it as ``FILE:LINE: reason``, or with ``skip_bad`` count it as skipped."""
        if not skip_bad:
            raise CorpusError(where, number, problem.reason, problem.kind) from None
        self._skip(problem.kind, f"{where}:{number}: {problem.reason}")


def corpus_report(path: str, pairs: int, skipped: dict[str, int], first_skipped: dict[str, str]) -> str:
    """:meth:`Corpus.report` for a corpus counted rather than held (``qkv prepare``)."""
    total_skipped = sum(skipped.values())
    head = f"{path}: {pairs:,} pairs"
    if not total_skipped:
        return head + ", no lines skipped"
    kinds = ", ".join(f"{count:,} {kind}" for kind, count in sorted(skipped.items()))
    lines = [f"{head}, {total_skipped:,} lines skipped ({kinds})"]
    lines += [f"  first {kind}: {message}" for kind, message in sorted(first_skipped.items())]
    return "\n".join(lines)


# --- reading raw lines -------------------------------------------------------------------------------------


ByteRange = tuple[int, int | None]  # [start, end) in bytes; end None: to the end of the file
WHOLE_FILE: ByteRange = (0, None)


def _raw_lines(path: StrPath, lines: ByteRange = WHOLE_FILE) -> Iterator[bytes]:
    """The lines of a file as bytes, split on b"\\n" only, without "\\n", a CRLF's "\\r" or line 1's BOM.

    A final newline at the end of the file does not make an extra empty line; a blank line anywhere
    (including a second newline at the end) does. ``lines`` limits the reading to the lines that start in a
    byte range (a range's start must be a line's start: 0 or just after a b"\\n").
    """
    start, end = lines
    with open(path, "rb") as file:  # binary mode: readline splits on b"\n" and nothing else
        file.seek(start)
        position = start
        for raw in file:
            if end is not None and position >= end:
                return
            first = position == 0
            position += len(raw)
            if raw.endswith(b"\n"):
                raw = raw[:-1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if first and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            yield raw


def _count_lines(path: StrPath) -> int:
    return sum(1 for _ in _raw_lines(path))


def _decode(raw: bytes) -> str:
    """Strictly decoded text of one line; NUL bytes and invalid UTF-8 are problems."""
    nul_at = raw.find(b"\x00")
    if nul_at >= 0:
        raise LineProblem(
            PROBLEM_NUL,
            f"NUL byte at byte {nul_at + 1} of the line (is the file UTF-16 or binary? convert it to "
            f"UTF-8, or {_SKIP_HINT})",
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        bad = raw[error.start : error.end].hex(" ")
        raise LineProblem(
            PROBLEM_UTF8,
            f"invalid UTF-8 at byte {error.start + 1} of the line (0x{bad}); convert the file to UTF-8 "
            f"(e.g. iconv -f GB18030 -t UTF-8) or {_SKIP_HINT}",
        ) from None


def _check_side(text: str, side: str, max_chars: int | None) -> str:
    """Return ``text`` if it is a usable side of a pair; ``side`` names it in messages."""
    if not text.strip():
        raise LineProblem(PROBLEM_EMPTY, f"empty {side} (remove the line or {_SKIP_HINT})")
    if "\x00" in text:  # only reachable through a JSON escape; raw NUL bytes are caught before decoding
        raise LineProblem(PROBLEM_NUL, f"NUL character in the {side} ({_SKIP_HINT})")
    if max_chars is not None and len(text) > max_chars:
        raise LineProblem(
            PROBLEM_TOO_LONG,
            f"{side} is {len(text):,} characters long, over the limit of {max_chars:,} "
            f"(raise --max-chars or {_SKIP_HINT})",
        )
    return text


def _check_max_chars(max_chars: int | None) -> None:
    if max_chars is not None and max_chars < 1:
        raise ValueError(f"max_chars must be at least 1 (or None for no limit), got {max_chars}")


def _finish(corpus: Corpus) -> Corpus:
    """Refuse a corpus with no pairs at all: training or scoring on nothing is never what was meant."""
    if not corpus.pairs:
        if corpus.skipped:
            raise CorpusError(corpus.path, None, "no usable sentence pairs; " + corpus.report())
        raise CorpusError(corpus.path, None, "no sentence pairs (the file is empty)")
    return corpus


# --- one line, one pair ------------------------------------------------------------------------------------

CorpusFormat = Literal["tsv", "parallel", "jsonl"]


@dataclass(frozen=True)
class CorpusSource:
    """What :func:`read_corpus` reads: the file (and the target file of a parallel corpus), its layout, the
    TSV columns or JSONL keys, and the length limit. Plain data, so that worker processes can be handed one
    and read parts of it (:func:`line_pairs`). Build it checked with :func:`corpus_source`."""

    path: str
    tgt_path: str | None = None
    file_format: CorpusFormat = "tsv"
    src_col: int = 1
    tgt_col: int = 2
    src_key: str = "src"
    tgt_key: str = "tgt"
    max_chars: int | None = DEFAULT_MAX_CHARS

    @property
    def name(self) -> str:
        """How reports name the corpus: the file, or ``"SRC + TGT"`` for two aligned files."""
        return f"{self.path} + {self.tgt_path}" if self.tgt_path is not None else self.path


def _tsv_pair(raw: bytes, src_col: int, tgt_col: int, max_chars: int | None) -> tuple[str, str]:
    text = _decode(raw)
    if not text.strip():
        raise LineProblem(PROBLEM_EMPTY, f"blank line, both sides empty (remove it or {_SKIP_HINT})")
    columns = text.split("\t")
    needed = max(src_col, tgt_col)
    if len(columns) < needed:
        raise LineProblem(
            PROBLEM_COLUMNS,
            f"expected at least {needed} tab-separated columns, got {len(columns)} ({_SKIP_HINT})",
        )
    source = _check_side(columns[src_col - 1], f"source side (column {src_col})", max_chars)
    target = _check_side(columns[tgt_col - 1], f"target side (column {tgt_col})", max_chars)
    return source, target


def _parallel_side(path: str, raw: bytes, side: str, max_chars: int | None) -> str:
    """One checked side of a parallel pair; a problem is tagged with the file it lies in."""
    try:
        return _check_side(_decode(raw), side, max_chars)
    except LineProblem as problem:
        problem.path = path
        raise


def _parallel_pair(source: CorpusSource, src_raw: bytes | None, tgt_raw: bytes | None) -> tuple[str, str]:
    src_name, tgt_name = source.path, str(source.tgt_path)
    if src_raw is None or tgt_raw is None:
        missing, present = (src_name, tgt_name) if src_raw is None else (tgt_name, src_name)
        raise LineProblem(
            PROBLEM_COUNT_MISMATCH,
            f"no matching line in {missing}, which is shorter; the two files must be aligned "
            f"line by line ({_SKIP_HINT})",
            path=present,
        )
    return (
        _parallel_side(src_name, src_raw, "source line", source.max_chars),
        _parallel_side(tgt_name, tgt_raw, "target line", source.max_chars),
    )


def line_pairs(
    source: CorpusSource, src_lines: ByteRange = WHOLE_FILE, tgt_lines: ByteRange = WHOLE_FILE
) -> Iterator[tuple[int, tuple[str, str] | LineProblem]]:
    """Every line of ``source`` (of the byte ranges given: ``tgt_lines`` for a parallel corpus's target
    file) numbered from 1, with its ``(source, target)`` pair or the :class:`LineProblem` that makes it bad
    (``problem.path`` names the file it lies in when that is not ``source.path``).

    The one parser of every reader: :func:`read_corpus` reads whole files with it, ``qkv prepare``
    (:mod:`qkv.data.prepare`) reads byte ranges of them in worker processes.
    """
    if source.file_format == "parallel":
        if source.tgt_path is None:
            raise ValueError("a parallel corpus needs tgt_path, the file of target lines")
        raw_pairs = zip_longest(_raw_lines(source.path, src_lines), _raw_lines(source.tgt_path, tgt_lines))
        for number, (src_raw, tgt_raw) in enumerate(raw_pairs, start=1):
            try:
                yield number, _parallel_pair(source, src_raw, tgt_raw)
            except LineProblem as problem:
                yield number, problem
        return
    for number, raw in enumerate(_raw_lines(source.path, src_lines), start=1):
        try:
            if source.file_format == "jsonl":
                pair = _parse_json_pair(_decode(raw), source.src_key, source.tgt_key, source.max_chars)
            else:
                pair = _tsv_pair(raw, source.src_col, source.tgt_col, source.max_chars)
        except LineProblem as problem:
            yield number, problem
            continue
        yield number, pair


def _read(source: CorpusSource, skip_bad: bool) -> Corpus:
    corpus = Corpus(source.name)
    for number, item in line_pairs(source):
        if isinstance(item, LineProblem):
            corpus._reject(item.path or source.path, number, item, skip_bad)
            continue
        corpus.pairs.append(item)
        corpus.line_numbers.append(number)
    return _finish(corpus)


def line_count_mismatch(src_path: str, tgt_path: str, src_count: int, tgt_count: int) -> CorpusError:
    """The error for two aligned files of different lengths, naming the longer file and its first
    unpaired line."""
    longer, shorter = (src_path, tgt_path) if src_count > tgt_count else (tgt_path, src_path)
    short_count, long_count = sorted((src_count, tgt_count))
    return CorpusError(
        longer,
        short_count + 1,
        f"no matching line in {shorter}, which has {short_count:,} lines ({longer} has "
        f"{long_count:,}); the two files must be aligned line by line (fix them, or use "
        f"--skip-bad to skip the {long_count - short_count:,} unpaired lines)",
        PROBLEM_COUNT_MISMATCH,
    )


# --- the three layouts -------------------------------------------------------------------------------------


def read_tsv(
    path: StrPath,
    src_col: int,
    tgt_col: int,
    *,
    max_chars: int | None = DEFAULT_MAX_CHARS,
    skip_bad: bool = False,
) -> Corpus:
    """Read ``(source, target)`` pairs from columns ``src_col`` and ``tgt_col`` (1-based) of a TSV file.

    A line needs at least ``max(src_col, tgt_col)`` tab-separated columns; more are fine (Tatoeba exports
    carry an attribution column). A blank line, a side that is empty or only whitespace, or one longer than
    ``max_chars`` characters is a bad line. Raises CorpusError at the first bad line unless ``skip_bad``.
    """
    source = corpus_source(path, file_format="tsv", src_col=src_col, tgt_col=tgt_col, max_chars=max_chars)
    return _read(source, skip_bad)


def read_parallel(
    src_path: StrPath,
    tgt_path: StrPath,
    *,
    max_chars: int | None = DEFAULT_MAX_CHARS,
    skip_bad: bool = False,
) -> Corpus:
    """Read pairs from two plain text files aligned line by line: line i of ``src_path`` with line i of
    ``tgt_path``.

    Files with different numbers of lines are refused before anything else is read (a missing or extra line
    usually shifts every later pair), unless ``skip_bad``: then the unpaired lines at the end of the longer
    file are skipped and counted as PROBLEM_COUNT_MISMATCH. A problem is reported in the file where it lies;
    the line number is the same in both. The returned Corpus is named ``"SRC + TGT"``.
    """
    source = corpus_source(src_path, tgt_path=tgt_path, max_chars=max_chars)
    if not skip_bad:
        src_count, tgt_count = _count_lines(src_path), _count_lines(tgt_path)
        if src_count != tgt_count:
            raise line_count_mismatch(source.path, str(source.tgt_path), src_count, tgt_count)
    return _read(source, skip_bad)


def read_jsonl(
    path: StrPath,
    *,
    src_key: str = "src",
    tgt_key: str = "tgt",
    max_chars: int | None = DEFAULT_MAX_CHARS,
    skip_bad: bool = False,
) -> Corpus:
    """Read pairs from a JSON Lines file: one object a line, ``{"src": "...", "tgt": "..."}``.

    Invalid JSON, a line that is not an object, or a value that is not a string is PROBLEM_JSON; an object
    without ``src_key`` or ``tgt_key`` is PROBLEM_MISSING_KEY; a blank line is PROBLEM_EMPTY. Other keys are
    ignored. Raises CorpusError at the first bad line unless ``skip_bad``.
    """
    source = corpus_source(path, file_format="jsonl", src_key=src_key, tgt_key=tgt_key, max_chars=max_chars)
    return _read(source, skip_bad)


def _parse_json_pair(text: str, src_key: str, tgt_key: str, max_chars: int | None) -> tuple[str, str]:
    if not text.strip():
        raise LineProblem(PROBLEM_EMPTY, f"blank line (remove it or {_SKIP_HINT})")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise LineProblem(
            PROBLEM_JSON, f"invalid JSON at column {error.colno}: {error.msg} ({_SKIP_HINT})"
        ) from None
    except RecursionError:  # "[[[[...": the decoder recurses once per level of nesting
        raise LineProblem(PROBLEM_JSON, f"invalid JSON: nested too deeply to read ({_SKIP_HINT})") from None
    except ValueError as error:  # an integer of more digits than Python converts (sys.int_info)
        raise LineProblem(PROBLEM_JSON, f"invalid JSON: {error} ({_SKIP_HINT})") from None
    if not isinstance(record, dict):
        raise LineProblem(
            PROBLEM_JSON,
            f'expected a JSON object like {{"{src_key}": ..., "{tgt_key}": ...}}, got '
            f"{type(record).__name__} ({_SKIP_HINT})",
        )
    sides: list[str] = []
    for key, side in ((src_key, "source"), (tgt_key, "target")):
        if key not in record:
            raise LineProblem(
                PROBLEM_MISSING_KEY,
                f'no "{key}" key for the {side} (keys present: {", ".join(map(repr, record)) or "none"}; '
                f"{_SKIP_HINT})",
            )
        value = record[key]
        if not isinstance(value, str):
            raise LineProblem(
                PROBLEM_JSON, f'"{key}" must hold a string, got {type(value).__name__} ({_SKIP_HINT})'
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # an escaped lone surrogate such as "\ud800"
            raise LineProblem(
                PROBLEM_UTF8, f'"{key}" holds an unpaired surrogate escape, not valid text ({_SKIP_HINT})'
            ) from None
        sides.append(_check_side(value, f'{side} ("{key}")', max_chars))
    return sides[0], sides[1]


# --- one entry point ---------------------------------------------------------------------------------------


def detect_format(path: StrPath, tgt_path: StrPath | None = None) -> CorpusFormat:
    """``parallel`` when a second file is given, ``jsonl`` for ``.jsonl``/``.json`` files, else ``tsv``."""
    if tgt_path is not None:
        return "parallel"
    if Path(path).suffix.lower() in (".jsonl", ".json"):
        return "jsonl"
    return "tsv"


def corpus_source(
    path: StrPath,
    *,
    tgt_path: StrPath | None = None,
    file_format: CorpusFormat | None = None,
    src_col: int = 1,
    tgt_col: int = 2,
    src_key: str = "src",
    tgt_key: str = "tgt",
    max_chars: int | None = DEFAULT_MAX_CHARS,
) -> CorpusSource:
    """A checked :class:`CorpusSource`, with :func:`read_corpus`'s arguments and rules."""
    chosen = file_format or detect_format(path, tgt_path)
    _check_max_chars(max_chars)
    if chosen == "parallel":
        if tgt_path is None:
            raise ValueError("a parallel corpus needs tgt_path, the file of target lines")
    elif tgt_path is not None:
        raise ValueError(f"tgt_path is only used with parallel files, not with format {chosen!r}")
    if chosen == "tsv":
        if src_col < 1 or tgt_col < 1:
            raise ValueError(f"columns are numbered from 1, got src_col={src_col}, tgt_col={tgt_col}")
        if src_col == tgt_col:
            raise ValueError(f"src_col and tgt_col are both {src_col}; the source and target must differ")
    elif chosen not in ("parallel", "jsonl"):
        raise ValueError(f"unknown corpus format {chosen!r}; expected one of tsv, parallel, jsonl")
    return CorpusSource(
        str(path),
        None if tgt_path is None else str(tgt_path),
        chosen,
        src_col,
        tgt_col,
        src_key,
        tgt_key,
        max_chars,
    )


def read_corpus(
    path: StrPath,
    *,
    tgt_path: StrPath | None = None,
    file_format: CorpusFormat | None = None,
    src_col: int = 1,
    tgt_col: int = 2,
    src_key: str = "src",
    tgt_key: str = "tgt",
    max_chars: int | None = DEFAULT_MAX_CHARS,
    skip_bad: bool = False,
) -> Corpus:
    """Read a corpus in any of the three layouts; ``file_format`` defaults to :func:`detect_format`.

    ``src_col``/``tgt_col`` apply to TSV only (default: source in column 1, target in column 2; for the
    shared ``English<TAB>Chinese`` data translating zh->en pass ``src_col=2, tgt_col=1``), ``src_key``/
    ``tgt_key`` to JSONL only, ``tgt_path`` (the target file) to parallel files only.
    """
    source = corpus_source(
        path,
        tgt_path=tgt_path,
        file_format=file_format,
        src_col=src_col,
        tgt_col=tgt_col,
        src_key=src_key,
        tgt_key=tgt_key,
        max_chars=max_chars,
    )
    return read_source(source, skip_bad=skip_bad)


def read_source(source: CorpusSource, *, skip_bad: bool = False) -> Corpus:
    """Read the corpus a :class:`CorpusSource` describes (see :func:`read_corpus`)."""
    if source.file_format == "parallel":
        return read_parallel(source.path, str(source.tgt_path), max_chars=source.max_chars, skip_bad=skip_bad)
    return _read(source, skip_bad)
