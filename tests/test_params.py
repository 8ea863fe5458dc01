"""qkv.params: one BERT encoder layer's parameters, by hand and exactly (issue 27, point 5).

References: the lectures' hand arithmetic written out below, and Hugging Face's BertLayer (an independent
implementation) counted on the meta device. The totals of whole models are tested in
tests/models/test_bert.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from qkv import cli, params
from qkv.config import BERT_PRESETS
from qkv.nn.layers import EncoderLayer

BERT_BASE = BERT_PRESETS["bert-base"]


def test_one_bert_base_layer_by_hand() -> None:
    rows = params.bert_layer_rows(BERT_BASE, with_biases=False)
    assert [(r.component, r.count) for r in rows] == [
        ("self-attention", 2_359_296),  # 4 x 768^2: W_Q, W_K, W_V, W_O
        ("feed-forward", 4_718_592),  # 2 x 768 x 3,072: W1, W2
        ("LayerNorm", 3_072),  # 2 LayerNorms x (gain + bias) x 768
    ]
    assert params.total(rows) == 7_080_960
    assert params.layer_line(rows) == "7,080,960 = 2,359,296 + 4,718,592 + 3,072"
    assert 12 * 7_080_960 == 84_971_520  # the 12 layers of the seed's 108,808,704 (with 23,835,648 + 1,536)


def test_one_bert_base_layer_exactly() -> None:
    rows = params.bert_layer_rows(BERT_BASE, with_biases=True)
    assert [r.count for r in rows] == [
        2_359_296 + 4 * 768,  # the biases of W_Q, W_K, W_V, W_O
        4_718_592 + 3_072 + 768,  # b1 and b2
        3_072,
    ]
    assert params.total(rows) == 7_087_872
    with torch.device("meta"):  # shapes only
        ours = EncoderLayer(768, 12, 3072, activation="gelu")
    assert sum(p.numel() for p in ours.parameters()) == 7_087_872


def test_one_layer_counts_as_hugging_face_bert_layer() -> None:
    transformers: Any = pytest.importorskip(
        "transformers", reason="pip install transformers (reference only)"
    )
    from transformers.models.bert.modeling_bert import BertLayer

    with torch.device("meta"):
        layer = BertLayer(transformers.BertConfig())  # BERT-base
    assert sum(p.numel() for p in layer.parameters()) == 7_087_872


def test_qkv_params_prints_the_per_layer_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["params", "--preset", "bert-base"]) == 0
    out = capsys.readouterr().out
    assert "One encoder layer (x 12)" in out
    assert "weights only:     7,080,960 = 2,359,296 + 4,718,592 + 3,072" in out
    assert "with the biases:  7,087,872 = 2,362,368 + 4,722,432 + 3,072" in out
