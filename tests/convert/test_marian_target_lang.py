"""`--target-lang` for multilingual Marian models: the language token in front of every line, as Hugging
Face users write it, and a clear error for a language the model has no token for."""

from __future__ import annotations

from pathlib import Path

import pytest

from qkv.cli import main
from tests.convert.marian_dirs import MarianDir, corpus, make_marian_dir
from tests.convert.test_marian import MAX_LENGTH, hf_generate

pytest.importorskip("sentencepiece")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def multilingual(tmp_path_factory: pytest.TempPathFactory) -> MarianDir:
    return make_marian_dir(tmp_path_factory.mktemp("marian") / "m", multilingual=True)


def qkv_greedy(model: Path, texts: list[str], capsys: pytest.CaptureFixture[str], *flags: str) -> list[str]:
    length = ["--beam", "1", "--alpha", "0", "--max-len-a", "0", "--max-len-b", str(MAX_LENGTH - 2)]
    assert main(["translate", "--model", str(model), *length, *flags, *texts]) == 0
    return capsys.readouterr().out.splitlines()


def test_target_lang_translates_as_hugging_face_does_with_the_token_written(
    multilingual: MarianDir, capsys: pytest.CaptureFixture[str]
) -> None:
    zh, _ = corpus(400)
    texts = [line for line in zh[200:206] if line.strip()]
    expected = [
        multilingual.hf_tokenizer.decode(ids, skip_special_tokens=True)
        for ids in hf_generate(multilingual, [">>fra<< " + t for t in texts], 1)
    ]
    assert qkv_greedy(multilingual.path, texts, capsys, "--target-lang", "fra") == expected
    # A line that names its own language keeps it.
    own = qkv_greedy(multilingual.path, [">>deu<< " + texts[0]], capsys, "--target-lang", "fra")
    assert own == qkv_greedy(multilingual.path, [">>deu<< " + texts[0]], capsys)


def test_a_language_without_a_token_is_a_usage_error_naming_the_known_ones(
    multilingual: MarianDir, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["translate", "--model", str(multilingual.path), "--target-lang", "xyz", "你好"]) == 2
    err = capsys.readouterr().err
    assert ">>xyz<<" in err and ">>fra<<" in err and ">>deu<<" in err and "Traceback" not in err
