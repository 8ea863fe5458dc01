"""Word alignment from cross-attention (qkv.align): words, the argmax rule over words, the layer, AER."""

from __future__ import annotations

import pytest
import torch

from qkv import align as align_module
from qkv.align import WordAlignment, align, alignment_error_rate, word_links, words
from qkv.config import preset
from qkv.data import demo
from qkv.models.seq2seq import Transformer
from qkv.tokenize import Tokenizer, train_bpe


@pytest.fixture(scope="module")
def tiny() -> tuple[Transformer, Tokenizer]:
    pairs = demo.generate(size=300)
    tok = train_bpe([t for pair in pairs for t in pair], 300)
    torch.manual_seed(0)
    return Transformer(preset("tiny", tok.vocab_size, dropout=0.0, max_positions=64)).eval(), tok


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("我爱你。", ["我", "爱", "你", "。"]),
        ("I love you.", ["I", "love", "you", "."]),
        ("Don't wait, well-known cats!", ["Don't", "wait", ",", "well-known", "cats", "!"]),
        ("他有3本书?", ["他", "有", "3", "本", "书", "?"]),
        ("  ", []),
        ("東京で café", ["東", "京", "で", "café"]),
    ],
)
def test_words_are_letter_runs_punctuation_marks_and_single_cjk_characters(
    text: str, expected: list[str]
) -> None:
    assert [text[s:e] for s, e in words(text)] == expected


def test_word_links_merge_pieces_before_the_argmax() -> None:
    # Source word 0 has tokens 0 and 1; output word 0 has tokens 0 and 1. Worked out by hand:
    # output word 0's row is the mean of rows 0 and 1 = [0.3, 0.3, 0.2, 0.2], whose word sums are
    # [0.6, 0.2, 0.2]: word 0, although token 2 (word 1) has row 0's largest single weight.
    weights = torch.tensor(
        [
            [0.3, 0.3, 0.4, 0.0],
            [0.3, 0.3, 0.0, 0.4],
            [0.1, 0.1, 0.15, 0.65],
        ]
    )
    assert word_links(weights, [[0], [0], [1], [2]], [[0], [0], [1]]) == [(0, 0), (2, 1)]
    # Token by token (each token its own word), the same weights link differently.
    assert word_links(weights, [[0], [1], [2], [3]], [[0], [1], [2]]) == [(2, 0), (3, 1), (3, 2)]
    # A token of no word (a space) counts for none; a token of two words counts half for each.
    assert word_links(weights, [[], [0], [0, 1], [1]], [[0], [], [1]]) == [(0, 0), (1, 1)]


# The demo tokenizer's pieces of the hand-built case below (asserted in the test):
SOURCE = "我们昨天吃了苹果。"  # words 我 们 昨 天 吃 了 苹 果 。 (0..8)
SOURCE_PIECES = ["▁", "我", "们", "昨", "天", "吃", "了", "苹", "果", "。"]
OUTPUT = "They ate apples yesterday."  # words They ate apples yesterday . (0..4)
OUTPUT_PIECES = ["▁They", "▁", "at", "e", "▁", "ap", "p", "l", "es", "▁yesterday", "."]
# Decoder layer 1, head 0: for each output piece, its weights on source pieces (the rest of the row
# spread evenly). Worked out by hand, with head 1 uniform over the 11 source positions:
# They: 我's pieces 0.3 + 0.3 beat 们's 0.4 -> 0; ate: at/e average to 吃 0.5 over 了 0.27 -> 4;
# apples -> 苹 (6); yesterday: 昨 0.5 over 天 0.4 -> 2; "." -> 。 (8).
LAYER_1 = {
    0: {0: 0.3, 1: 0.3, 2: 0.4},
    2: {5: 0.7},
    3: {6: 0.5, 5: 0.3},
    5: {7: 0.8},
    6: {7: 0.8},
    7: {8: 0.6},
    8: {7: 0.8},
    9: {3: 0.5, 4: 0.4},
    10: {9: 0.9},
}


def _row(weights: dict[int, float], columns: int) -> list[float]:
    rest = (1.0 - sum(weights.values())) / (columns - len(weights))
    return [weights.get(k, rest) for k in range(columns)]


def test_align_links_each_output_word_to_the_source_word_of_a_known_attention(
    tiny: tuple[Transformer, Tokenizer], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tok = tiny
    assert tok.inner.encode(SOURCE, add_special_tokens=False).tokens == SOURCE_PIECES
    assert tok.inner.encode(OUTPUT, add_special_tokens=False).tokens == OUTPUT_PIECES
    source_ids = [*tok.encode(SOURCE), model.config.eos_id]
    output_ids = tok.encode(OUTPUT)
    rows, columns = len(output_ids) + 1, len(source_ids)
    head_0 = torch.tensor([_row(LAYER_1.get(t, {}), columns) for t in range(rows)])
    layer_1 = torch.stack([head_0, torch.full((rows, columns), 1.0 / columns)])
    layer_0 = torch.tensor([_row({9: 0.9}, columns) for _ in range(rows)]).expand(2, rows, columns)
    attention = torch.stack([layer_0, layer_1])  # (layers, heads, output + 1, source)
    assert model.config.decoder_layers == 2

    def known(m: Transformer, src: list[int], out: list[int]) -> torch.Tensor:
        assert m is model and src == source_ids and out == output_ids
        return attention

    monkeypatch.setattr(align_module, "cross_attention", known)
    found = align(model, tok, tok, SOURCE, source_ids, output_ids, layer=1)
    assert found.source_words == list("我们昨天吃了苹果。")
    assert found.target_words == ["They", "ate", "apples", "yesterday", "."]
    assert found.links == [(0, 0), (4, 1), (6, 2), (2, 3), (8, 4)]
    assert str(found) == "0-0 4-1 6-2 2-3 8-4"
    assert align(model, tok, tok, SOURCE, source_ids, output_ids, layer=-1).links == found.links
    assert align(model, tok, tok, SOURCE, source_ids, output_ids, layer=0).links == [(8, j) for j in range(5)]
    with pytest.raises(ValueError, match="layer 2: the decoder has layers 0..1"):
        align(model, tok, tok, SOURCE, source_ids, output_ids, layer=2)


def test_alignments_of_a_model_are_well_formed(tiny: tuple[Transformer, Tokenizer]) -> None:
    model, tok = tiny
    pairs = demo.generate(size=40, seed=5)
    for zh, en in pairs:
        source_ids = [*tok.encode(zh), model.config.eos_id]
        found = align(model, tok, tok, zh, source_ids, tok.encode(en))
        assert found.source_words == [zh[s:e] for s, e in words(zh)]
        assert found.target_words == [en[s:e] for s, e in words(en)]
        assert [j for _, j in found.links] == list(range(len(found.target_words)))  # one link per word
        assert all(0 <= i < len(found.source_words) for i, _ in found.links)
    empty = align(model, tok, tok, "我爱你", [*tok.encode("我爱你"), model.config.eos_id], [])
    assert empty == WordAlignment(["我", "爱", "你"], [], []) and str(empty) == ""


def test_alignment_error_rate_by_hand() -> None:
    # Och & Ney (2003): 1 - (|A&S| + |A&P|) / (|A| + |S|), S counted in P.
    assert alignment_error_rate([(0, 0), (1, 1), (2, 1)], [(0, 0), (1, 1)], [(2, 1)]) == 0.0
    assert alignment_error_rate([(0, 1)], [(0, 0)]) == 1.0
    assert alignment_error_rate([(0, 0), (1, 0)], [(0, 0), (1, 1)]) == pytest.approx(1 - 2 / 4)
    assert alignment_error_rate([(0, 0), (1, 0)], [(0, 0)], [(1, 0)]) == pytest.approx(1 - 3 / 3)
    assert alignment_error_rate([(0, 0), (2, 2)], [(0, 0), (1, 1)], [(2, 2)]) == pytest.approx(1 - 3 / 4)
    assert alignment_error_rate([], []) == 0.0
