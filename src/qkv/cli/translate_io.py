"""What `qkv translate` reads and writes besides plain lines: jsonl requests with per-line controls, and
the text, tsv and jsonl outputs (n-best lists, scores, tokens, word alignments).

Every input line gives output for that line, in order: in text and jsonl one output line per input line
(a line skipped with --skip-bad gives an empty line, or ``{"error": ...}`` in jsonl); in tsv one row per
candidate, each row naming its input line.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qkv.align import WordAlignment
    from qkv.glossary import Glossary
    from qkv.tokenize import Tokenizer
    from qkv.translator import Translation

#: The fields of a jsonl request line.
REQUEST_FIELDS = ("text", "prefix", "constraints")


@dataclass(frozen=True)
class Request:
    """One line to translate: its ``text``, a forced target ``prefix`` ("" for none) and the target
    phrases that must appear (``constraints``)."""

    text: str
    prefix: str = ""
    constraints: list[str] = field(default_factory=list)


class BadLine(ValueError):
    """A jsonl line that cannot be read; the message starts with ``line N:``."""


def _type_name(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number"
    )


def parse_request(line: str, number: int) -> Request:
    """A jsonl line ``{"text": ..., "prefix": ..., "constraints": [...]}`` (only "text" is required) as a
    :class:`Request`. :class:`BadLine` says what is wrong with line ``number``."""
    where = f"line {number}"
    if number == 1:
        line = line.removeprefix("\ufeff")  # a byte order mark some editors write at the start of a file
    try:
        value = json.loads(line, object_pairs_hook=_object_without_repeats)
    except json.JSONDecodeError as e:
        if not line.strip():
            raise BadLine(f'{where}: empty; expected a JSON object like {{"text": "..."}}') from None
        raise BadLine(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise BadLine(f"{where}: JSON nested too deeply") from None
    except _RepeatedField as e:
        raise BadLine(f'{where}: field "{e}" given twice') from None
    if not isinstance(value, dict):
        raise BadLine(f'{where}: expected a JSON object like {{"text": "..."}}, got {_type_name(value)}')
    unknown = [key for key in value if key not in REQUEST_FIELDS]
    if unknown:
        raise BadLine(f'{where}: unknown field "{unknown[0]}" (the fields are {", ".join(REQUEST_FIELDS)})')
    if "text" not in value:
        raise BadLine(f'{where}: no "text" field')
    text, prefix, constraints = value["text"], value.get("prefix", ""), value.get("constraints", [])
    for name, item in (("text", text), ("prefix", prefix)):
        if not isinstance(item, str):
            raise BadLine(f'{where}: "{name}" must be a string, got {_type_name(item)}')
    if not isinstance(constraints, list):
        raise BadLine(f'{where}: "constraints" must be a list of strings, got {_type_name(constraints)}')
    for k, phrase in enumerate(constraints):
        if not isinstance(phrase, str):
            raise BadLine(f'{where}: "constraints"[{k}] must be a string, got {_type_name(phrase)}')
        if not phrase.strip():
            raise BadLine(f'{where}: "constraints"[{k}] is empty')
    if any(c in text for c in "\n\r"):
        raise BadLine(f'{where}: "text" holds a line break; give one sentence a line')
    named = [
        ('"text"', text),
        ('"prefix"', prefix),
        *((f'"constraints"[{k}]', c) for k, c in enumerate(constraints)),
    ]
    for name, item in named:
        try:
            item.encode("utf-8")
        except UnicodeEncodeError as e:  # JSON's \ud800 escapes can write half of a surrogate pair
            raise BadLine(
                f"{where}: {name} holds {item[e.start]!r}, half of a surrogate pair, not a character"
            ) from None
    return Request(text, prefix, list(constraints))


class _RepeatedField(ValueError):
    """A JSON object names a field twice (json.loads would keep the last silently)."""


def _object_without_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _RepeatedField(key)
        found[key] = value
    return found


def requests_of(
    args: argparse.Namespace,
    first: int,
    lines: list[str],
    glossary: Glossary | None,
    problem: Callable[[str, list[str]], str | None],
) -> list[Request | BadLine]:
    """Each line as a :class:`Request` (the flags' prefix and constraints, the glossary's terms), or the
    :class:`BadLine` that says why it cannot be read (jsonl input) or cannot be translated as asked:
    ``problem(prefix, constraints)`` says what is wrong with a line's controls (the translator's
    :meth:`~qkv.translator.Translator.controls_problem`), or None."""
    found: list[Request | BadLine] = []
    for number, line in enumerate(lines, start=first):
        if args.input_format == "jsonl":
            try:
                request = parse_request(line, number)
            except BadLine as e:
                found.append(e)
                continue
            prefix = request.prefix or (args.prefix or "")
            constraints = [*request.constraints, *args.constraint]
        else:
            request, prefix, constraints = Request(line), args.prefix or "", list(args.constraint)
        if not request.text.strip():  # an empty line gives an empty line, whatever the controls
            found.append(Request(request.text))
            continue
        if glossary is not None:
            constraints += [term for term in glossary.constraints(request.text) if term not in constraints]
        if args.sample and constraints:
            found.append(BadLine(f"line {number}: constraints need beam search; leave out --sample"))
            continue
        wrong = problem(prefix, constraints)
        if wrong is not None:
            found.append(BadLine(f"line {number}: {wrong}"))
            continue
        found.append(Request(request.text, prefix, constraints))
    return found


def _one_field(text: str) -> str:
    """Text for a tab-separated column: tabs become spaces (line breaks never reach here)."""
    return text.replace("\t", " ")


def text_line(translation: Translation, *, scores: bool, alignment: WordAlignment | None) -> str:
    """The text format: ``[SCORE<TAB>]TEXT[<TAB>ALIGNMENT]``, the best candidate only."""
    best = translation.candidates[0]
    columns = [f"{best.score:.4f}"] if scores else []
    columns.append(_one_field(best.text) if scores or alignment is not None else best.text)
    if alignment is not None:
        columns.append(str(alignment))
    return "\t".join(columns)


def tsv_rows(number: int, translation: Translation, alignment: WordAlignment | None) -> list[str]:
    """The tsv format: a row ``LINE<TAB>RANK<TAB>SCORE<TAB>TEXT[<TAB>ALIGNMENT]`` per candidate, best
    first (line and rank count from 1; the alignment is the best candidate's, on its row)."""
    rows = []
    for rank, candidate in enumerate(translation.candidates, start=1):
        columns = [str(number), str(rank), f"{candidate.score:.4f}", _one_field(candidate.text)]
        if alignment is not None:
            columns.append(str(alignment) if rank == 1 else "")
        rows.append("\t".join(columns))
    return rows


def jsonl_line(translation: Translation, tokenizer: Tokenizer, alignment: WordAlignment | None) -> str:
    """The jsonl format: ``{"text", "score", "tokens", "n_best": [{"text", "score", "log_prob", "tokens"},
    ...]}``
    with ``"alignment"``, ``"source_words"`` and ``"target_words"`` when asked for."""
    best = translation.candidates[0]
    record: dict[str, Any] = {
        "text": best.text,
        "score": best.score,
        "tokens": [tokenizer.id_to_token(i) for i in best.ids],
        "n_best": [
            {
                "text": c.text,
                "score": c.score,
                "log_prob": c.log_prob,
                "tokens": [tokenizer.id_to_token(i) for i in c.ids],
            }
            for c in translation.candidates
        ],
    }
    if alignment is not None:
        record["alignment"] = str(alignment)
        record["source_words"] = alignment.source_words
        record["target_words"] = alignment.target_words
    return json.dumps(record, ensure_ascii=False)


def skipped_line(output_format: str, number: int, message: str) -> list[str]:
    """What a line skipped with --skip-bad writes: an empty line (text), ``{"error": ..., "line": N}``
    (jsonl), nothing (tsv, whose rows name their lines)."""
    if output_format == "jsonl":
        return [json.dumps({"error": message, "line": number}, ensure_ascii=False)]
    return [] if output_format == "tsv" else [""]


def output_lines(
    output_format: str,
    number: int,
    translation: Translation,
    tokenizer: Tokenizer,
    *,
    scores: bool,
    alignment: WordAlignment | None,
) -> Sequence[str]:
    """The lines ``--format`` writes for input line ``number``."""
    if output_format == "jsonl":
        return [jsonl_line(translation, tokenizer, alignment)]
    if output_format == "tsv":
        return tsv_rows(number, translation, alignment)
    return [text_line(translation, scores=scores, alignment=alignment)]
