"""Corpus readers: every bad line is named as FILE:LINE or skipped and counted; good lines come back intact."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from qkv.data.corpus import (
    PROBLEM_COLUMNS,
    PROBLEM_COUNT_MISMATCH,
    PROBLEM_EMPTY,
    PROBLEM_JSON,
    PROBLEM_MISSING_KEY,
    PROBLEM_NUL,
    PROBLEM_TOO_LONG,
    PROBLEM_UTF8,
    CorpusError,
    read_corpus,
    read_jsonl,
    read_parallel,
    read_tsv,
)

SHARED_DATA = Path(__file__).parents[2] / ".." / "shared" / "data"


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- each kind of bad line names the file and the line -----------------------------------------------------

BAD_TSV_LINES = {
    PROBLEM_COLUMNS: b"only one column",
    PROBLEM_EMPTY: b"\t\xe4\xbd\xa0\xe5\xa5\xbd",  # empty English side
    PROBLEM_UTF8: b"Hello.\t\xff\xfe",
    PROBLEM_NUL: b"Hel\x00lo.\tok",
    PROBLEM_TOO_LONG: b"x" * 10_000 + b"\tok",
}


@pytest.mark.parametrize("kind", sorted(BAD_TSV_LINES))
def test_tsv_error_names_file_line_and_kind(tmp_path: Path, kind: str) -> None:
    path = write(
        tmp_path / "train.tsv", b"Hi.\t\xe5\x97\xa8\xe3\x80\x82\nRun.\tgo\n" + BAD_TSV_LINES[kind] + b"\n"
    )
    with pytest.raises(CorpusError) as caught:
        read_tsv(path, 2, 1)
    message = str(caught.value)
    assert message.startswith(f"{path}:3: "), message
    assert "--skip-bad" in message
    assert caught.value.kind == kind and caught.value.line == 3


def test_column_message_reads_as_documented(tmp_path: Path) -> None:
    path = write(tmp_path / "train.tsv", b"a\tb\nno tab here\n")
    with pytest.raises(CorpusError, match=r"train\.tsv:2: expected at least 2 tab-separated columns, got 1 "):
        read_tsv(path, 2, 1)


def test_blank_line_in_the_middle_is_an_empty_side(tmp_path: Path) -> None:
    path = write(tmp_path / "train.tsv", b"a\tb\n\nc\td\n")
    with pytest.raises(CorpusError) as caught:
        read_tsv(path, 1, 2)
    assert str(caught.value).startswith(f"{path}:2: blank line") and caught.value.kind == PROBLEM_EMPTY
    path = write(tmp_path / "train.tsv", b"a\tb\n\tb\nc\td\n")
    with pytest.raises(CorpusError) as caught:
        read_tsv(path, 1, 2)
    assert str(caught.value).startswith(f"{path}:2: empty source side") and caught.value.kind == PROBLEM_EMPTY


def test_whitespace_only_side_is_empty(tmp_path: Path) -> None:
    path = write(tmp_path / "t.tsv", b"a\t  \n")
    with pytest.raises(CorpusError, match=r"t\.tsv:1: empty target side"):
        read_tsv(path, 1, 2)


def test_max_chars_counts_characters_not_bytes(tmp_path: Path) -> None:
    path = write(tmp_path / "t.tsv", ("好" * 10 + "\tten\n").encode())  # 10 characters, 30 bytes
    assert read_tsv(path, 1, 2, max_chars=10).pairs == [("好" * 10, "ten")]
    with pytest.raises(CorpusError, match=r"t\.tsv:1: source side \(column 1\) is 10 characters long"):
        read_tsv(path, 1, 2, max_chars=9)
    assert read_tsv(path, 1, 2, max_chars=None).pairs == [("好" * 10, "ten")]


@pytest.mark.parametrize(
    ("kind", "line"),
    [
        (PROBLEM_JSON, b'{"src": "a", "tgt": '),
        (PROBLEM_JSON, b'["a", "b"]'),
        (PROBLEM_JSON, b'{"src": 1, "tgt": "b"}'),
        (PROBLEM_MISSING_KEY, b'{"src": "a"}'),
        (PROBLEM_EMPTY, b""),
        (PROBLEM_EMPTY, b'{"src": "a", "tgt": ""}'),
        (PROBLEM_UTF8, b'{"src": "\\ud800", "tgt": "b"}'),
        (PROBLEM_NUL, b'{"src": "a\\u0000", "tgt": "b"}'),
        (PROBLEM_UTF8, b'{"src": "\xc3", "tgt": "b"}'),
    ],
)
def test_jsonl_error_names_file_and_line(tmp_path: Path, kind: str, line: bytes) -> None:
    path = write(tmp_path / "train.jsonl", b'{"src": "x", "tgt": "y"}\n' + line + b"\n")
    with pytest.raises(CorpusError) as caught:
        read_jsonl(path)
    assert str(caught.value).startswith(f"{path}:2: "), str(caught.value)
    assert caught.value.kind == kind


def test_jsonl_reads_pairs_and_ignores_other_keys(tmp_path: Path) -> None:
    lines = [json.dumps({"src": "我爱你", "tgt": "I love you.", "id": 7}, ensure_ascii=False)]
    lines.append(json.dumps({"zh": "你好", "en": "Hello."}, ensure_ascii=False))
    path = write(tmp_path / "c.jsonl", ("\n".join(lines) + "\n").encode())
    assert read_jsonl(path, skip_bad=True).pairs == [("我爱你", "I love you.")]
    assert read_jsonl(path, skip_bad=True).skipped == {PROBLEM_MISSING_KEY: 1}
    assert read_jsonl(path, src_key="zh", tgt_key="en", skip_bad=True).pairs == [("你好", "Hello.")]


@pytest.mark.parametrize(("src_lines", "tgt_lines", "longer", "line"), [(3, 2, "a.zh", 3), (2, 4, "b.en", 3)])
def test_parallel_count_mismatch_names_longer_file(
    tmp_path: Path, src_lines: int, tgt_lines: int, longer: str, line: int
) -> None:
    src = write(tmp_path / "a.zh", b"".join(b"zh %d\n" % i for i in range(src_lines)))
    tgt = write(tmp_path / "b.en", b"".join(b"en %d\n" % i for i in range(tgt_lines)))
    with pytest.raises(CorpusError) as caught:
        read_parallel(src, tgt)
    assert str(caught.value).startswith(f"{tmp_path / longer}:{line}: no matching line in ")
    assert caught.value.kind == PROBLEM_COUNT_MISMATCH
    corpus = read_parallel(src, tgt, skip_bad=True)
    assert corpus.pairs == [(f"zh {i}", f"en {i}") for i in range(min(src_lines, tgt_lines))]
    assert corpus.skipped == {PROBLEM_COUNT_MISMATCH: abs(src_lines - tgt_lines)}


def test_parallel_problem_is_reported_in_the_file_it_lies_in(tmp_path: Path) -> None:
    src = write(tmp_path / "a.zh", b"one\ntwo\nthree\n")
    tgt = write(tmp_path / "b.en", b"1\n\xff\n3\n")
    with pytest.raises(CorpusError, match=r"b\.en:2: invalid UTF-8 at byte 1"):
        read_parallel(src, tgt)


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"empty\.tsv: no sentence pairs"):
        read_tsv(write(tmp_path / "empty.tsv", b""), 1, 2)
    with pytest.raises(CorpusError, match=r"bad\.tsv: no usable sentence pairs"):
        read_tsv(write(tmp_path / "bad.tsv", b"x\n"), 1, 2, skip_bad=True)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "t.tsv", b"a\tb\n")
    with pytest.raises(ValueError, match="numbered from 1"):
        read_tsv(path, 0, 1)
    with pytest.raises(ValueError, match="must differ"):
        read_tsv(path, 1, 1)
    with pytest.raises(ValueError, match="max_chars"):
        read_tsv(path, 1, 2, max_chars=0)


# --- line splitting ----------------------------------------------------------------------------------------


def test_only_newline_splits_lines(tmp_path: Path) -> None:
    text = "a\rb\tx\u2028y\nc\u0085d\te\n"
    path = write(tmp_path / "t.tsv", text.encode())
    assert read_tsv(path, 1, 2).pairs == [("a\rb", "x\u2028y"), ("c\u0085d", "e")]


def test_bom_crlf_and_missing_final_newline(tmp_path: Path) -> None:
    path = write(tmp_path / "t.tsv", b"\xef\xbb\xbfHi.\t\xe5\x97\xa8\r\nBye.\tb\r\nlast\tl")
    corpus = read_tsv(path, 1, 2)
    assert corpus.pairs == [("Hi.", "嗨"), ("Bye.", "b"), ("last", "l")]
    assert corpus.line_numbers == [1, 2, 3]


def test_bom_is_only_removed_from_line_one(tmp_path: Path) -> None:
    path = write(tmp_path / "t.tsv", b"a\tb\n\xef\xbb\xbfc\td\n")
    assert read_tsv(path, 1, 2).pairs == [("a", "b"), ("\ufeffc", "d")]


def test_second_newline_at_the_end_is_a_blank_line(tmp_path: Path) -> None:
    path = write(tmp_path / "t.tsv", b"a\tb\n\n")
    corpus = read_tsv(path, 1, 2, skip_bad=True)
    assert corpus.pairs == [("a", "b")] and corpus.skipped == {PROBLEM_EMPTY: 1}


# --- fuzz: kept pairs equal an independently built list, skips counted per kind ----------------------------


def _fuzz_lines(
    rng: random.Random, count: int
) -> tuple[list[bytes], list[tuple[int, tuple[str, str]]], dict[str, int]]:
    """Lines of a TSV (English<TAB>Chinese) with the pair each good line must give and the count per bad kind.

    The expectation is written down while each line is built, from what the line was made to be: it does
    not come from any reader.
    """
    alphabet = "abc XYZ 我爱你。？\u2028\u0085\r\u00e9\U0001f600"
    lines: list[bytes] = []
    expected: list[tuple[int, tuple[str, str]]] = []
    skipped: dict[str, int] = {}

    def text() -> str:
        # Starts and ends with a letter: never blank, and a "\r" never ends the line (that would be a CRLF).
        return "q" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) + "z"

    for number in range(1, count + 1):
        kind = rng.choice(
            ["good", "good", "good", "crlf", "extra", *sorted(BAD_TSV_LINES), "blank", "spaces"]
        )
        english, chinese = text(), text()
        line = f"{english}\t{chinese}".encode()
        if kind in ("good", "crlf", "extra"):
            if kind == "crlf":
                line += b"\r"
            if kind == "extra":
                line += b"\tattribution #1"
            expected.append((number, (chinese, english)))
            lines.append(line)
            continue
        if kind == PROBLEM_COLUMNS:
            line = english.encode()
        elif kind == PROBLEM_EMPTY:
            line = f"{english}\t".encode() if rng.random() < 0.5 else f"\t{chinese}".encode()
        elif kind == "blank":
            kind, line = PROBLEM_EMPTY, b""
        elif kind == "spaces":
            kind, line = PROBLEM_EMPTY, b" \t "
        elif kind == PROBLEM_UTF8:
            cut = rng.randint(0, len(line))
            line = line[:cut] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xe4\xbd"]) + line[cut:]
        elif kind == PROBLEM_NUL:
            cut = rng.randint(0, len(line))
            line = line[:cut] + b"\x00" + line[cut:]
        elif kind == PROBLEM_TOO_LONG:
            line = ("y" * 10_000 + "\t" + chinese).encode()
        skipped[kind] = skipped.get(kind, 0) + 1
        lines.append(line)
    return lines, expected, skipped


@pytest.mark.parametrize("seed", range(5))
def test_fuzz_tsv_keeps_exactly_the_good_lines(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    lines, expected, skipped = _fuzz_lines(rng, 300)
    data = b"\n".join(lines) + b"\n"
    if seed % 2:
        data = b"\xef\xbb\xbf" + data  # a BOM changes nothing
    path = write(tmp_path / "fuzz.tsv", data)
    corpus = read_tsv(path, 2, 1, skip_bad=True)
    assert list(zip(corpus.line_numbers, corpus.pairs, strict=True)) == expected
    assert corpus.skipped == skipped
    assert len(corpus) + sum(corpus.skipped.values()) == len(lines)  # nothing dropped silently
    for kind, message in corpus.first_skipped.items():
        assert message.startswith(f"{path}:"), (kind, message)
    # Without skip_bad the first bad line is the one named.
    first_bad = next(n for n in range(1, len(lines) + 1) if n not in {line for line, _ in expected})
    with pytest.raises(CorpusError) as caught:
        read_tsv(path, 2, 1)
    assert str(caught.value).startswith(f"{path}:{first_bad}: ")


def test_fuzz_parallel_and_jsonl_agree_with_the_same_expectation(tmp_path: Path) -> None:
    rng = random.Random(11)
    pairs = [
        ("q" + "".join(rng.choice("我你\r\u2028\u0085ab") for _ in range(8)) + "z", f"t{i}")
        for i in range(50)
    ]
    bad_at = {5: PROBLEM_NUL, 17: PROBLEM_UTF8, 30: PROBLEM_EMPTY}
    src_lines = [source.encode() for source, _ in pairs]
    for number, kind in bad_at.items():
        src_lines[number - 1] = {PROBLEM_NUL: b"a\x00b", PROBLEM_UTF8: b"a\x80b", PROBLEM_EMPTY: b""}[kind]
    tgt_lines = [target.encode() for _, target in pairs] + [b"extra 1", b"extra 2"]
    src = write(tmp_path / "c.zh", b"\n".join(src_lines) + b"\n")
    tgt = write(tmp_path / "c.en", b"\r\n".join(tgt_lines) + b"\r\n")
    corpus = read_parallel(src, tgt, skip_bad=True)
    expected = [pair for number, pair in enumerate(pairs, start=1) if number not in bad_at]
    assert corpus.pairs == expected
    assert corpus.skipped == {PROBLEM_NUL: 1, PROBLEM_UTF8: 1, PROBLEM_EMPTY: 1, PROBLEM_COUNT_MISMATCH: 2}
    assert "5 lines skipped" in corpus.report()

    records = [json.dumps({"src": s, "tgt": t}, ensure_ascii=False).encode() for s, t in pairs]
    for number in bad_at:
        records[number - 1] = src_lines[number - 1]
    jsonl = write(tmp_path / "c.jsonl", b"\n".join(records) + b"\n")
    corpus = read_corpus(jsonl, skip_bad=True)
    assert corpus.pairs == expected
    assert corpus.skipped == {PROBLEM_NUL: 1, PROBLEM_UTF8: 1, PROBLEM_EMPTY: 1}


# --- the dispatcher and the shared data --------------------------------------------------------------------


def test_read_corpus_dispatches_on_layout(tmp_path: Path) -> None:
    tsv = write(tmp_path / "c.tsv", "I love you.\t我爱你。\n".encode())
    assert read_corpus(tsv).pairs == [("I love you.", "我爱你。")]
    assert read_corpus(tsv, src_col=2, tgt_col=1).pairs == [("我爱你。", "I love you.")]
    zh, en = write(tmp_path / "c.zh", "我爱你。\n".encode()), write(tmp_path / "c.en", b"I love you.\n")
    assert read_corpus(zh, tgt_path=en).pairs == [("我爱你。", "I love you.")]
    jsonl = write(tmp_path / "c.txt", '{"src": "我爱你。", "tgt": "I love you."}\n'.encode())
    assert read_corpus(jsonl, file_format="jsonl").pairs == [("我爱你。", "I love you.")]
    with pytest.raises(ValueError, match="tgt_path"):
        read_corpus(tsv, tgt_path=en, file_format="tsv")


def test_report_lists_counts_and_first_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "t.tsv", b"a\tb\nbad\n\xff\tx\nc\td\n")
    corpus = read_tsv(path, 1, 2, skip_bad=True)
    report = corpus.report()
    assert "2 pairs, 2 lines skipped (1 invalid UTF-8, 1 too few columns)" in report
    assert f"{path}:2: expected at least 2" in report and f"{path}:3: invalid UTF-8" in report
    assert read_tsv(path, 1, 2, skip_bad=True).sources == ["a", "c"]


def test_shared_cmn_eng_train_split_reads_cleanly() -> None:
    path = SHARED_DATA / "cmn-eng" / "train.tsv"
    if not path.exists():
        pytest.skip(f"shared data not present at {path}")
    corpus = read_tsv(path, src_col=2, tgt_col=1)
    assert len(corpus) == 28_979
    assert corpus.skipped == {}
    assert corpus.pairs[0] == ("嗨。", "Hi.")
