"""Translator.translations (candidates with ids and scores) and viz.cross_attention (weights by ids)."""

from __future__ import annotations

import math

import pytest
import torch

from qkv.config import preset
from qkv.data import demo
from qkv.decode import SearchConfig, decode
from qkv.models.seq2seq import Transformer
from qkv.tokenize import Tokenizer, train_bpe
from qkv.translator import Translator
from qkv.viz import attention_weights, cross_attention


@pytest.fixture(scope="module")
def tiny() -> tuple[Transformer, Tokenizer]:
    pairs = demo.generate(size=200)
    tok = train_bpe([t for pair in pairs for t in pair], 200)
    torch.manual_seed(0)
    return Transformer(preset("tiny", tok.vocab_size, dropout=0.0, max_positions=64)).eval(), tok


def test_candidates_are_the_searchs_hypotheses_with_their_text(tiny: tuple[Transformer, Tokenizer]) -> None:
    model, tok = tiny
    search = SearchConfig(beam=4, n_best=3)
    translator = Translator(model, tok, tok, search=search)
    texts = ["我爱你", "", "他们喜欢猫"]
    found = translator.translations(texts)
    expected = decode(model, translator.source_ids(texts), search)
    assert [t.source_ids for t in found] == [
        [*tok.encode(x), model.config.eos_id] if x else [] for x in texts
    ]
    for translation, hyps in zip(found, expected, strict=True):
        assert [c.ids for c in translation.candidates] == [h.tokens for h in hyps]
        assert [c.score for c in translation.candidates] == [h.score for h in hyps]
        assert [c.text for c in translation.candidates] == [tok.decode(h.tokens).strip() for h in hyps]
    assert len(found[0].candidates) == 3 and len(found[1].candidates) == 1
    assert found[1].text == "" and found[1].candidates[0].log_prob == 0.0
    assert translator.translate(texts) == [t.text for t in found]


def test_cross_attention_is_the_teacher_forced_maps_by_id(tiny: tuple[Transformer, Tokenizer]) -> None:
    model, tok = tiny
    source, target = "我爱你", "I love you ."
    src_ids = [*tok.encode(source), model.config.eos_id]
    out_ids = tok.encode(target)
    weights = cross_attention(model, src_ids, out_ids)
    c = model.config
    assert weights.shape == (c.decoder_layers, c.heads, len(out_ids) + 1, len(src_ids))
    assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:-1]), atol=1e-5)
    maps = attention_weights(model, tok, tok, source, target)
    assert torch.allclose(weights, torch.stack(maps.cross), atol=1e-6)  # the encoder may take its fused path
    assert not math.isnan(float(weights.sum()))


def test_a_phrase_the_vocabulary_cannot_write_is_refused_with_its_line(
    tiny: tuple[Transformer, Tokenizer],
) -> None:
    model, tok = tiny
    translator = Translator(model, tok, tok)
    assert translator.unwritable("I love you") == []
    assert translator.unwritable("Жук Жаба") == ["Ж", "у", "к", "а", "б"]
    with pytest.raises(
        ValueError, match="line 8: constraint 'Жук': the model's vocabulary cannot write 'Жук'"
    ):
        translator.translations(["我爱你", "他很高"], constraints=[["I"], ["Жук"]], first_line=7)
    with pytest.raises(ValueError, match="line 1: prefix 'Ж': the model's vocabulary cannot write 'Ж'"):
        translator.translations(["我爱你"], prefixes=["Ж"])
    with pytest.raises(ValueError, match="line 2: constraint '' is empty"):
        translator.translations(["我爱你", "他"], constraints=[["I"], [""]])
    assert translator.controls_problem("I", ["love you", "you"]) is None  # "you" lies inside "love you"
    most = model.config.max_positions - 1
    assert translator.controls_problem("I", ["love"] * most) is None  # the same phrase counts once
    prefix = " ".join(["I"] * most)
    needed = len(tok.encode(prefix)) + len(tok.encode("love"))
    assert needed > most
    assert translator.controls_problem(prefix, ["love"]) == (
        f"its prefix and constraints need {needed} tokens, more than the {most} the model can write"
    )
