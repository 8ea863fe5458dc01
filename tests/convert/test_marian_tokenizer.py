"""Marian's tokenization (qkv.tokenize_spm, read by qkv.convert.marian) against transformers.MarianTokenizer on SentencePiece models trained
in the test: the same ids for sources and targets, the same decoded text."""

from __future__ import annotations

import pytest

from qkv.convert.marian import marian_tokenizers
from tests.convert.marian_dirs import LANGUAGE_TOKENS, MarianDir, corpus, make_marian_dir

pytest.importorskip("sentencepiece")
pytest.importorskip("transformers")

# CJK, emoji, characters no SentencePiece model here has seen, spaces, empty text, a language token.
EDGE_CASES = [
    "",
    " ",
    "我爱你。",
    "他很高。 Tom is tall!",
    "😀 emoji 🎉🎉",
    "ꙮ unknown ᚠᚢᚦ characters ◊",
    "  leading and   repeated spaces  ",
    "数字 123 和 ASCII.",
    "ｆｕｌｌｗｉｄｔｈ　ＡＢＣ",
    "tab\tinside",
]


@pytest.fixture(scope="module", params=[False, True], ids=["shared", "separate"])
def marian(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> MarianDir:
    root = tmp_path_factory.mktemp("spm")
    # The same directories as test_marian.py's (their trained weights are made once per session).
    if request.param:
        return make_marian_dir(root / "m", separate=True, activation="swish")
    return make_marian_dir(root / "m", separate=False, activation="relu", multilingual=True)


def texts() -> list[str]:
    zh, en = corpus(300)
    return [*zh[:150], *en[:150], *EDGE_CASES]


def test_source_ids_equal_marian_tokenizers(marian: MarianDir) -> None:
    src, _ = marian_tokenizers(marian.path)
    hf = marian.hf_tokenizer
    for text in texts():
        assert [*src.encode(text), src.eos_id] == hf(text).input_ids, text


def test_target_ids_and_decoding_equal_marian_tokenizers(marian: MarianDir) -> None:
    _, tgt = marian_tokenizers(marian.path)
    hf = marian.hf_tokenizer
    for text in texts():
        ids = hf(text_target=text).input_ids
        assert [*tgt.encode(text), tgt.eos_id] == ids, text
        assert tgt.decode(ids) == hf.decode(ids, skip_special_tokens=True), text


def test_unknown_pieces_and_characters_are_unk(marian: MarianDir) -> None:
    src, _ = marian_tokenizers(marian.path)
    assert src.unk_id == 1
    ids = src.encode("ꙮ")
    assert ids and set(ids) <= {src.unk_id, src.token_to_id("▁")}
    assert src.unk_rate(["ꙮᚠ"]) > 0


def test_language_tokens_stay_whole(marian: MarianDir) -> None:
    if marian.hf_tokenizer.separate_vocabs:
        pytest.skip("the multilingual directory is the shared one")
    src, _ = marian_tokenizers(marian.path)
    for token in LANGUAGE_TOKENS:
        ids = src.encode(f"{token} 我爱你。")
        assert ids[0] == src.token_to_id(token)
        assert [*ids, src.eos_id] == marian.hf_tokenizer(f"{token} 我爱你。").input_ids
    # An unknown language token is one <unk>, as MarianTokenizer maps it.
    assert src.encode(">>xyz<< 你")[0] == src.unk_id
    assert [*src.encode(">>xyz<< 你"), 0] == marian.hf_tokenizer(">>xyz<< 你").input_ids
