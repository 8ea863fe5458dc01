"""qkv.glossary: reading a glossary file and the target terms a text asks for."""

from __future__ import annotations

from pathlib import Path

import pytest

from qkv.glossary import Glossary


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "terms.tsv"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_skips_blank_and_comment_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "# zh<TAB>en\n\n猫\tkitten\n 苹果汁 \t apple juice \n")
    assert Glossary.load(path).entries == (("猫", "kitten"), ("苹果汁", "apple juice"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("猫\tkitten\n狗\n", ":2: expected 2 tab-separated columns (source term, target term), got 1"),
        ("猫\tkitten\tcat\n", ":1: expected 2 tab-separated columns (source term, target term), got 3"),
        ("猫\t \n", ":1: the target term is empty"),
        ("\tkitten\n", ":1: the source term is empty"),
        ("猫\tkitten\n狗\tdog\n猫\tcat\n", ":3: source term '猫' is already on line 1"),
    ],
)
def test_a_bad_line_is_named(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as e:
        Glossary.load(path)
    assert str(e.value) == f"{path}{message}"


def test_invalid_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "terms.tsv"
    path.write_bytes("猫\tkitten\n".encode() + b"\xff\tx\n")
    with pytest.raises(ValueError, match=f"{path}: not UTF-8"):
        Glossary.load(path)


def test_terms_asked_for_are_those_present_longest_first_in_text_order() -> None:
    glossary = Glossary((("苹果", "apple"), ("苹果汁", "apple juice"), ("猫", "kitten"), ("狗", "hound")))
    assert glossary.constraints("我喜欢猫。") == ["kitten"]
    assert glossary.constraints("我喜欢鸟。") == []
    # 苹果汁 is taken before 苹果, and the 苹果 inside it is not taken again; the second 苹果 is.
    assert glossary.constraints("狗喝苹果汁") == ["hound", "apple juice"]
    assert glossary.constraints("苹果和苹果汁") == ["apple", "apple juice"]
    assert glossary.constraints("猫和猫") == ["kitten"]  # each target term once


def test_terms_of_spaced_scripts_match_whole_words_only() -> None:
    glossary = Glossary((("cat", "Katze"), ("New York", "New York City"), ("C++", "C++")))
    assert glossary.constraints("a cat.") == ["Katze"]
    assert glossary.constraints("category cats concat") == []
    assert glossary.constraints("Cat") == []  # case-sensitive
    assert glossary.constraints("to New York, then") == ["New York City"]
    assert glossary.constraints("in C++ and C++11") == ["C++"]
    assert glossary.constraints("猫cat猫") == ["Katze"]  # a CJK neighbour is a boundary


def test_lines_end_at_newlines_only_and_a_byte_order_mark_is_skipped(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeff猫\tkit\u2028ten\r\n狗\tdog\x85s\n鸟\n")
    with pytest.raises(ValueError, match=":3: expected 2 tab-separated columns"):
        Glossary.load(path)  # line 3 as an editor counts it, not 5
    path = write(tmp_path, "\ufeff猫\tkitten\r\n")
    assert Glossary.load(path).entries == (("猫", "kitten"),)
