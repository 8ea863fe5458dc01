"""Tests of qkv.tokenize: fixed special ids, exact round trips, WordPiece against a hand computation."""

from __future__ import annotations

import stat
import unicodedata
from pathlib import Path

import pytest
import tokenizers
from tokenizers import models, pre_tokenizers

from qkv.tokenize import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    Tokenizer,
    train_bpe,
    train_chars,
    train_tokenizer,
)

ENGLISH = [
    "I love you.",
    "Do you love me?",
    "Hi.",
    "Run!",
    "I don't know what you mean.",
    'Tom said, "It\'s fine."',
    "We left at 3:30 p.m. on Monday.",
    "Where is the train station?",
    "She's (probably) at home; call her.",
    "It costs $12.50 -- or 10% less.",
    "Please, don't go!",
    "My e-mail address is tom@example.com.",
    "The quick brown fox jumps over the lazy dog.",
    "PACK MY BOX WITH FIVE DOZEN LIQUOR JUGS.",
    "Is it 'yes' or 'no'?",
    "Two  spaces, and a trailing one ",
    "Numbers: 1, 22, 333, 4444 and 3.14159.",
    "[brackets] {braces} <angles> /slashes\\ |pipes| ~tilde^ `back` #hash &amp *star _under +plus =eq",
]
CHINESE = [
    "我爱你。",
    "你爱我吗？",
    "他说：“没关系。”",
    "我们在星期一下午三点半离开了。",
    "火车站在哪里？",
    "请不要走！",
    "这本书很有意思，我看了三遍。",
    "汤姆(Tom)是我的朋友。",
]
CORPUS = ENGLISH + CHINESE


def nfkc(text: str) -> str:
    """The independent reference: what decode(encode(text)) must give (both tokenizers apply NFKC)."""
    return unicodedata.normalize("NFKC", text)


def is_han(char: str) -> bool:
    return unicodedata.name(char, "").startswith("CJK UNIFIED IDEOGRAPH")


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_bpe(CORPUS * 3, vocab_size=400)


@pytest.fixture(scope="module")
def chars() -> Tokenizer:
    return train_chars(CORPUS)


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_special_tokens_have_fixed_ids(kind: str) -> None:
    tokenizer = train_tokenizer(CORPUS, kind, 300)  # type: ignore[arg-type]
    assert SPECIAL_TOKENS == ("<pad>", "<s>", "</s>", "<unk>")
    assert [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id) == (
        PAD_ID,
        BOS_ID,
        EOS_ID,
        UNK_ID,
    )
    assert (PAD_ID, BOS_ID, EOS_ID, UNK_ID) == (0, 1, 2, 3)
    assert tokenizer.id_to_token(2) == "</s>"


def test_bpe_round_trips_the_two_sentences_exactly(bpe: Tokenizer) -> None:
    for sentence in ["I love you.", "Do you love me?"]:
        assert bpe.decode(bpe.encode(sentence)) == sentence


@pytest.mark.parametrize("sentence", CORPUS)
def test_bpe_round_trips_every_sentence(bpe: Tokenizer, sentence: str) -> None:
    assert bpe.unk_rate([sentence]) == 0.0  # all its characters were seen in training
    assert bpe.decode(bpe.encode(sentence)) == nfkc(sentence).lstrip(" ")


def test_bpe_round_trips_unseen_sentences_of_seen_characters(bpe: Tokenizer) -> None:
    unseen = ["You love me.", "Do I know you?", "Is the fox at home?", "我爱火车。", "你们在哪里？"]
    for sentence in unseen:
        assert bpe.unk_rate([sentence]) == 0.0
        assert bpe.decode(bpe.encode(sentence)) == nfkc(sentence)


def test_bpe_splits_punctuation_from_words(bpe: Tokenizer) -> None:
    tokens = bpe.tokens("I love you.")
    assert tokens[-1] == "."
    assert "".join(tokens) == "▁I▁love▁you."
    for token in bpe.tokens("Please, don't go! Is it 'yes' or 'no'?"):
        has_letter = any(char.isalpha() for char in token)
        has_punctuation = any(unicodedata.category(char).startswith("P") for char in token)
        assert not (has_letter and has_punctuation), token


def test_bpe_never_merges_han_characters(bpe: Tokenizer) -> None:
    for sentence in CHINESE:
        for token in bpe.tokens(sentence):
            assert sum(is_han(char) for char in token) <= 1, token


def test_fullwidth_punctuation_is_nfkc_normalised(bpe: Tokenizer) -> None:
    assert bpe.decode(bpe.encode("你爱我吗？")) == "你爱我吗?"


def test_char_level_gives_every_character_its_own_token(chars: Tokenizer) -> None:
    sentence = "这本书很有意思，我看了三遍。"
    expected = list(nfkc(sentence))
    assert chars.tokens(sentence) == expected
    ids = chars.encode(sentence)
    assert len(ids) == len(expected)
    assert UNK_ID not in ids
    # The same character always has the same id and different characters different ids.
    assert len(set(zip(expected, ids, strict=True))) == len(set(expected)) == len(set(ids))


@pytest.mark.parametrize("sentence", CORPUS + [" leading space", "a  b\nnew line\tand tab"])
def test_char_level_round_trips_exactly(sentence: str) -> None:
    chars = train_chars(CORPUS + [" leading space", "a  b\nnew line\tand tab"])
    assert chars.decode(chars.encode(sentence)) == nfkc(sentence)
    assert chars.tokens("a b") == ["a", "▁", "b"]


def test_char_level_min_frequency_and_max_size() -> None:
    texts = ["aaaa", "bbb", "cc", "d"]
    assert train_chars(texts).vocab_size == 4 + 4
    assert train_chars(texts, min_frequency=2).vocab_size == 4 + 3
    capped = train_chars(texts, max_size=6)
    assert capped.vocab_size == 6
    assert capped.token_to_id("a") is not None and capped.token_to_id("b") is not None
    assert capped.token_to_id("c") is None  # the least frequent go first


def test_unk_rate_counts_an_unseen_character() -> None:
    tokenizer = train_chars(["abc"])
    # Hand count: "abz" has 3 tokens and one of them, z, is unknown; "ca" has none of 2.
    assert tokenizer.unk_rate(["abz", "ca"]) == pytest.approx(1 / 5)
    assert tokenizer.encode("abz") == [tokenizer.token_to_id("a"), tokenizer.token_to_id("b"), UNK_ID]
    assert tokenizer.unk_rate([]) == 0.0


def test_bpe_maps_unseen_characters_to_unk(bpe: Tokenizer) -> None:
    ids = bpe.encode("I love 🍎.")
    assert UNK_ID in ids
    assert bpe.unk_rate(["I love 🍎."]) > 0


def test_decode_skips_special_tokens_everywhere_and_stops_at_none(bpe: Tokenizer) -> None:
    ids = bpe.encode("I love you.")
    more = bpe.encode("Do you love me?")
    assert bpe.decode([BOS_ID, *ids, EOS_ID, PAD_ID, PAD_ID]) == "I love you."
    assert bpe.decode([*ids, EOS_ID, *more]) == "I love you. Do you love me?"


def test_decode_rejects_ids_outside_the_vocabulary(bpe: Tokenizer) -> None:
    with pytest.raises(ValueError, match=f"id {bpe.vocab_size}.*vocab_size"):
        bpe.decode([5, bpe.vocab_size])
    with pytest.raises(IndexError):
        bpe.id_to_token(-1)


def test_special_token_spelled_in_the_text_is_ordinary_text(bpe: Tokenizer) -> None:
    assert EOS_ID not in bpe.encode("I love </s> you.")
    assert bpe.encode("") == []
    assert bpe.encode_batch(["I love you.", ""]) == [bpe.encode("I love you."), []]


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_save_and_load_give_identical_ids(tmp_path: Path, kind: str) -> None:
    tokenizer = train_tokenizer(CORPUS, kind, 300)  # type: ignore[arg-type]
    path = tokenizer.save(tmp_path / "tokenizer.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    loaded = Tokenizer.load(path)
    from_directory = Tokenizer.load(tmp_path)
    from_text = Tokenizer.from_json(tokenizer.to_json())
    for sentence in CORPUS + ["I love </s> 🍎."]:
        expected = tokenizer.encode(sentence)
        assert loaded.encode(sentence) == expected
        assert from_directory.encode(sentence) == expected
        assert from_text.encode(sentence) == expected
        assert loaded.decode(expected) == tokenizer.decode(expected)
    assert loaded.vocab_size == tokenizer.vocab_size
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]  # no temporary file left behind


def test_missing_files_raise_file_not_found_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(FileNotFoundError, match="nope/tokenizer.json.*train"):
        Tokenizer.load(missing)
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        Tokenizer.from_vocab_txt(tmp_path / "vocab.txt")


def test_a_file_that_is_not_a_tokenizer_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="tokenizer.json: not a valid tokenizer.json"):
        Tokenizer.load(path)


def test_tokenizer_json_without_our_specials_loads(tmp_path: Path) -> None:
    inner = tokenizers.Tokenizer(models.WordLevel({"hello": 0, "world": 1, "<oov>": 2}, unk_token="<oov>"))
    inner.pre_tokenizer = pre_tokenizers.Whitespace()
    inner.save(str(tmp_path / "tokenizer.json"))
    loaded = Tokenizer.load(tmp_path / "tokenizer.json")
    assert loaded.encode("hello world there") == [0, 1, 2]
    assert (loaded.pad_id, loaded.bos_id, loaded.eos_id) == (None, None, None)
    assert loaded.unk_id == 2  # the model's own unknown token
    assert (loaded.cls_id, loaded.sep_id, loaded.mask_id) == (None, None, None)


def test_train_tokenizer_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="'bpe' or 'char'"):
        train_tokenizer(CORPUS, "word", 100)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="vocab_size=4"):
        train_bpe(CORPUS, 4)
    assert train_tokenizer(CORPUS, "char", 10).vocab_size == 10


# ---- BERT WordPiece ---------------------------------------------------------------------------------------

BERT_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",  # 0-4
    "the", "quick", "brown", "fox", "jump",  # 5-9
    "##ed", "##s", "over", "lazy", "dog",  # 10-14
    ".", ",", "un", "##aff", "##able",  # 15-19
    "我", "爱", "你", "cafe", "!",  # 20-24
]  # fmt: skip
BERT_TEXT = "The quick brown fox jumped, unaffable! 我爱你 Café zebra."


def write_vocab(directory: Path) -> Path:
    path = directory / "vocab.txt"
    path.write_text("\n".join(BERT_VOCAB) + "\n", encoding="utf-8")
    return path


def test_bert_vocab_txt_matches_a_hand_computation(tmp_path: Path) -> None:
    tokenizer = Tokenizer.from_vocab_txt(write_vocab(tmp_path))
    # By hand: lowercase and strip accents (Café -> cafe), split punctuation and each Chinese character off,
    # then greedy longest match: jumped = jump ##ed, unaffable = un ##aff ##able, zebra = [UNK].
    expected = [
        "the", "quick", "brown", "fox", "jump", "##ed", ",", "un", "##aff", "##able", "!",
        "我", "爱", "你", "cafe", "[UNK]", ".",
    ]  # fmt: skip
    assert tokenizer.tokens(BERT_TEXT) == expected
    assert tokenizer.encode(BERT_TEXT) == [BERT_VOCAB.index(token) for token in expected]
    assert tokenizer.vocab_size == len(BERT_VOCAB)
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id) == (
        0,
        1,
        2,
        3,
        4,
    )
    assert (tokenizer.bos_id, tokenizer.eos_id) == (2, 3)  # [CLS] and [SEP] stand in for <s> and </s>
    assert tokenizer.encode("the [MASK] dog") == [5, 4, 14]  # BERT recognises [MASK] in the text
    assert tokenizer.decode([2, 5, 8, 9, 10, 15, 3, 0]) == "the fox jumped."


def test_bert_vocab_txt_without_lowercasing(tmp_path: Path) -> None:
    tokenizer = Tokenizer.from_vocab_txt(write_vocab(tmp_path), lowercase=False)
    assert tokenizer.tokens("The fox jumps") == ["[UNK]", "fox", "jump", "##s"]


def test_bert_vocab_txt_needs_an_unk_line(tmp_path: Path) -> None:
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\nthe\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab.txt: has no \[UNK\]"):
        Tokenizer.from_vocab_txt(path)


def test_bert_vocab_txt_matches_transformers(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    path = write_vocab(tmp_path)
    reference = transformers.BertTokenizerFast.from_pretrained(str(path.parent), do_lower_case=True)
    ours = Tokenizer.from_vocab_txt(path)
    for text in [BERT_TEXT, "the lazy dog jumps over the fox!", "Unaffable, the [MASK] cafe."]:
        assert ours.encode(text) == reference(text, add_special_tokens=False)["input_ids"]
