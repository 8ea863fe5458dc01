"""Attention heat maps: encoder self-attention, decoder self-attention and cross-attention, per layer
and head, with the tokens on the axes; and a BERT (encoder-only) model's self-attention.

:func:`attention_weights` (translation models) and :func:`bert_attention_weights` (BERT) return the
weights, for your own analysis; :func:`attention_figure` draws them and :func:`plot_attention` writes the
drawing to a file. Every panel names its axes (rows: queries, columns: keys) and one colour bar gives the
scale. :mod:`qkv.viz_lines` draws one word's attention as lines between the words instead.
Chinese tokens are drawn with a CJK font (:mod:`qkv.viz_fonts`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from qkv.decode.nat import NATIteration, mask_predict
from qkv.embed import SentenceEmbedder
from qkv.models.nat import NATransformer
from qkv.models.seq2seq import Decoded, Encoded, Transformer
from qkv.nn.modes import eval_mode
from qkv.tokenize import Tokenizer
from qkv.viz_fonts import BUNDLED_FONT, font_families, label

__all__ = [
    "BUNDLED_FONT",
    "KINDS",
    "AttentionMaps",
    "SelfAttentionMaps",
    "attention_figure",
    "attention_weights",
    "bert_attention_weights",
    "cross_attention",
    "merge_lone_metaspace",
    "nat_attention_weights",
    "plot_attention",
    "save_figure",
]

if TYPE_CHECKING:
    from matplotlib.figure import Figure

KINDS = ("encoder", "decoder_self", "cross")
METASPACE = "\u2581"  # the Metaspace pre-tokenizer's word-start marker
# What each kind's rows (queries) and columns (keys) are, written on every panel's axes.
SIDES = {
    "encoder": ("query: source token", "key: source token"),
    "decoder_self": ("query: target (token it predicts)", "key: decoder input"),
    "cross": ("query: target (token it predicts)", "key: source token"),
    "self": ("query: token", "key: token"),
}


@dataclass
class AttentionMaps:
    """Attention weights of one sentence pair, per layer: tensors of shape (heads, queries, keys).

    Decoder rows are the target positions labelled with the token each one *produces* (t1 .. tn, </s>);
    decoder self-attention columns are the decoder's inputs (<s>, t1 .. tn); encoder rows and columns and
    cross-attention columns are the source tokens (ending in </s>).
    """

    src_tokens: list[str]
    tgt_in_tokens: list[str]
    tgt_out_tokens: list[str]
    encoder: list[Tensor]
    decoder_self: list[Tensor]
    cross: list[Tensor]

    def axes(self, kind: str) -> tuple[list[str], list[str]]:
        """(row labels, column labels) of a kind of map."""
        if kind == "encoder":
            return self.src_tokens, self.src_tokens
        if kind == "decoder_self":
            return self.tgt_out_tokens, self.tgt_in_tokens
        if kind == "cross":
            return self.tgt_out_tokens, self.src_tokens
        raise ValueError(f"unknown attention kind {kind!r}; choose from {KINDS}")

    def layers(self, kind: str) -> list[Tensor]:
        return {"encoder": self.encoder, "decoder_self": self.decoder_self, "cross": self.cross}[kind]


@dataclass
class SelfAttentionMaps:
    """The self-attention of an encoder-only model (BERT) on one text: its tokens ([CLS] ... [SEP]) and,
    per layer, a tensor of shape (heads, queries, keys) over those tokens."""

    tokens: list[str]
    layers: list[Tensor]


@torch.inference_mode()
def bert_attention_weights(embedder: SentenceEmbedder, text: str) -> SelfAttentionMaps:
    """Run a BERT model on one text (tokenized as :class:`~qkv.embed.SentenceEmbedder` does: [CLS] text
    [SEP], truncated to its maximum length) and collect every layer's attention weights, per head."""
    [ids] = embedder.ids([text])
    device = next(embedder.model.parameters()).device
    out = embedder.model(torch.tensor([ids], device=device), need_weights=True)
    assert out.weights is not None
    return SelfAttentionMaps(
        tokens=[embedder.tokenizer.id_to_token(i) for i in ids],
        layers=[w[0].float().cpu() for w in out.weights],
    )


@torch.inference_mode()
def attention_weights(
    model: Transformer, src_tokenizer: Tokenizer, tgt_tokenizer: Tokenizer, source: str, target: str
) -> AttentionMaps:
    """Run the model on one (source, target) pair by teacher forcing and collect every attention weight."""
    c = model.config
    src_ids = [*src_tokenizer.encode(source), c.eos_id]
    tgt_ids = tgt_tokenizer.encode(target)
    encoded, decoded = _teacher_forced(model, src_ids, tgt_ids)
    assert (
        encoded.weights is not None and decoded.self_weights is not None and decoded.cross_weights is not None
    )

    def names(tok: Tokenizer, ids: list[int]) -> list[str]:
        return [tok.id_to_token(i) for i in ids]

    return AttentionMaps(
        src_tokens=names(src_tokenizer, src_ids),
        tgt_in_tokens=names(tgt_tokenizer, [c.bos_id, *tgt_ids]),
        tgt_out_tokens=names(tgt_tokenizer, [*tgt_ids, c.eos_id]),
        encoder=[w[0].float().cpu() for w in encoded.weights],
        decoder_self=[w[0].float().cpu() for w in decoded.self_weights],
        cross=[w[0].float().cpu() for w in decoded.cross_weights],
    )


@torch.inference_mode()
def cross_attention(model: Transformer, source_ids: list[int], output_ids: list[int]) -> Tensor:
    """The cross-attention of every decoder layer and head when the model reads ``source_ids`` (ending in
    </s>, as decoding saw them) and is teacher-forced with ``output_ids`` (without <s>/</s>, as a
    hypothesis's ``tokens``).

    Shape: (layers, heads, len(output_ids) + 1, len(source_ids)), float32 on the CPU; row i is the
    position that predicts output token i (the last row predicts </s>), and each row sums to 1.
    """
    _, decoded = _teacher_forced(model, source_ids, output_ids, encoder_weights=False)
    assert decoded.cross_weights is not None
    return torch.stack([w[0] for w in decoded.cross_weights]).float().cpu()


def _teacher_forced(
    model: Transformer, src_ids: list[int], tgt_ids: list[int], *, encoder_weights: bool = True
) -> tuple[Encoded, Decoded]:
    """One sentence pair through the model (in eval mode) with the attention weights kept."""
    c = model.config
    device = next(model.parameters()).device
    src = torch.tensor([src_ids], device=device)
    tgt_in = torch.tensor([[c.bos_id, *tgt_ids]], device=device)
    with eval_mode(model):
        encoded = model.encode(src, need_weights=encoder_weights)
        return encoded, model.decode(tgt_in, encoded, need_weights=True)


@torch.inference_mode()
def nat_attention_weights(
    model: NATransformer,
    src_tokenizer: Tokenizer,
    tgt_tokenizer: Tokenizer,
    source: str,
    *,
    iterations: int = 1,
    adaptive: bool = False,
) -> list[AttentionMaps]:
    """Translate one sentence with mask-predict and collect the attention of each of its decoder passes
    (``adaptive``: until a pass changes no token, as :func:`~qkv.decode.nat.mask_predict`).

    One :class:`AttentionMaps` per pass: the decoder self-attention has no causal triangle (every position
    sees every other); its columns are the pass's inputs (``[MASK]`` where a token is to be predicted) and
    its rows what the pass output at each position. The encoder maps are the same in every pass.
    """
    c = model.config
    device = next(model.parameters()).device
    src_ids = [*src_tokenizer.encode(source), c.eos_id]
    encoded = model.encode(torch.tensor([src_ids], device=device), need_weights=True)
    assert encoded.weights is not None
    trace: list[NATIteration] = []
    mask_predict(
        model, torch.tensor([src_ids], device=device), iterations=iterations, trace=trace, adaptive=adaptive
    )

    def names(tok: Tokenizer, ids: list[int]) -> list[str]:
        return ["[MASK]" if i == c.mask_id else tok.id_to_token(i) for i in ids]

    return [
        AttentionMaps(
            src_tokens=names(src_tokenizer, src_ids),
            tgt_in_tokens=names(tgt_tokenizer, step.inputs[0].tolist()),
            tgt_out_tokens=names(tgt_tokenizer, step.tokens[0].tolist()),
            encoder=[w[0].float().cpu() for w in encoded.weights],
            decoder_self=[w[0].float().cpu() for w in step.self_weights],
            cross=[w[0].float().cpu() for w in step.cross_weights],
        )
        for step in trace
    ]


# ---- a lone ▁ joins the next token ----------------------------------------------------------------------


def _groups(tokens: list[str]) -> list[list[int]]:
    """Positions drawn as one row or column: a lone ▁ (the Metaspace split before a Han character, which
    has no space before it) joins the token after it; every other token stands alone."""
    groups: list[list[int]] = []
    pending: list[int] = []
    for i, token in enumerate(tokens):
        if token == METASPACE and i + 1 < len(tokens):
            pending.append(i)
            continue
        groups.append([*pending, i])
        pending = []
    return groups


def _merge(weights: Tensor, rows: list[list[int]], columns: list[list[int]]) -> Tensor:
    """Weights over merged positions: a merged key gets the sum of its columns (the attention paid to the
    word), a merged query the mean of its rows; each row still sums to 1.
    Shapes: (heads, q_len, k_len) -> (heads, len(rows), len(columns))."""
    if all(len(g) == 1 for g in rows) and all(len(g) == 1 for g in columns):
        return weights
    summed = torch.stack([weights[..., g].sum(dim=-1) for g in columns], dim=-1)
    return torch.stack([summed[..., g, :].mean(dim=-2) for g in rows], dim=-2)


def _joined(tokens: list[str], groups: list[list[int]]) -> list[str]:
    return ["".join(tokens[i] for i in g) for g in groups]


def merge_lone_metaspace(maps: AttentionMaps) -> AttentionMaps:
    """The maps as :func:`plot_attention` draws them: each lone ``▁`` token is merged into the token after
    it (``▁`` + ``我`` is drawn as one row and one column, ``_我``), so it takes no row or column of its own.

    Merging, not dropping: the attention a query pays to ``▁`` is added to the word it opens (keys are
    summed), and the rows of the two queries are averaged, so every row still sums to 1. The weights that
    :func:`attention_weights` returns are the model's, one row and column per token.
    """
    src, tgt_in, tgt_out = _groups(maps.src_tokens), _groups(maps.tgt_in_tokens), _groups(maps.tgt_out_tokens)
    return AttentionMaps(
        src_tokens=_joined(maps.src_tokens, src),
        tgt_in_tokens=_joined(maps.tgt_in_tokens, tgt_in),
        tgt_out_tokens=_joined(maps.tgt_out_tokens, tgt_out),
        encoder=[_merge(w, src, src) for w in maps.encoder],
        decoder_self=[_merge(w, tgt_out, tgt_in) for w in maps.decoder_self],
        cross=[_merge(w, tgt_out, src) for w in maps.cross],
    )


# ---- the figure ----------------------------------------------------------------------------------------------


@dataclass
class _Row:
    """One row of panels: a kind of attention in one layer, (heads, queries, keys), and its axes."""

    kind: str
    layer: int
    weights: Tensor
    y_labels: list[str]
    x_labels: list[str]


def _rows(
    maps: AttentionMaps | SelfAttentionMaps,
    kinds: tuple[str, ...],
    layers: list[int] | None,
    heads: list[int] | None,
) -> tuple[list[_Row], list[int]]:
    """The rows of panels to draw and the heads (columns), checked against what the maps hold."""
    if isinstance(maps, SelfAttentionMaps):
        kinds = ("self",)
        per_kind = {"self": maps.layers}
        axes = {"self": (maps.tokens, maps.tokens)}
    else:
        for kind in kinds:
            maps.axes(kind)  # validates the kind
        maps = merge_lone_metaspace(maps)
        per_kind = {kind: maps.layers(kind) for kind in kinds}
        axes = {kind: maps.axes(kind) for kind in kinds}
    n_layers = max(len(per_kind[k]) for k in kinds)
    n_heads = next(w for k in kinds for w in per_kind[k]).shape[0]
    layer_ids = layers if layers is not None else list(range(n_layers))
    head_ids = heads if heads is not None else list(range(n_heads))
    for i in layer_ids:
        if not 0 <= i < n_layers:
            raise ValueError(f"layer {i} does not exist (layers 0..{n_layers - 1})")
    for h in head_ids:
        if not 0 <= h < n_heads:
            raise ValueError(f"head {h} does not exist (heads 0..{n_heads - 1})")
    rows = [
        _Row(kind, layer, per_kind[kind][layer], *axes[kind])
        for kind in kinds
        for layer in layer_ids
        if layer < len(per_kind[kind])
    ]
    return rows, head_ids


def attention_figure(
    maps: AttentionMaps | SelfAttentionMaps,
    *,
    kinds: tuple[str, ...] = KINDS,
    layers: list[int] | None = None,
    heads: list[int] | None = None,
    title: str | None = None,
) -> Figure:
    """One heat map per (kind, layer, head): rows of layers, columns of heads, and one colour bar.

    Every panel's y axis is labelled with what its rows are (the queries) and its x axis with what its
    columns are (the keys); the figure title sits above the panels (constrained layout makes room for it
    and for the colour bar). A translation model's lone ``▁`` tokens are merged into the next token
    (:func:`merge_lone_metaspace`). ``kinds`` is ignored for a BERT model's :class:`SelfAttentionMaps`.
    """
    from matplotlib.figure import Figure

    rows, head_ids = _rows(maps, kinds, layers, heads)
    families, covered = font_families()
    longest = max(max(len(r.x_labels), len(r.y_labels)) for r in rows)
    cell = max(2.4, 0.28 * longest + 1.2)  # room for the ticks and the axis labels
    default_title = "attention weights (rows: queries, columns: keys)"
    with font_context(families):
        fig = Figure(figsize=(cell * len(head_ids) + 1.2, cell * len(rows) + 0.6), layout="constrained")
        axes = fig.subplots(len(rows), len(head_ids), squeeze=False)
        image = None
        for r, row in enumerate(rows):
            y_side, x_side = SIDES[row.kind]
            for c, head in enumerate(head_ids):
                ax = axes[r][c]
                image = ax.imshow(
                    row.weights[head].numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto"
                )
                ax.set_xticks(range(len(row.x_labels)))
                ax.set_xticklabels([label(t, covered) for t in row.x_labels], rotation=90, fontsize=8)
                ax.set_yticks(range(len(row.y_labels)))
                ax.set_yticklabels([label(t, covered) for t in row.y_labels], fontsize=8)
                ax.set_xlabel(x_side, fontsize=7)
                ax.set_ylabel(y_side, fontsize=7)
                name = "self-attention" if row.kind == "self" else row.kind.replace("_", " ")
                ax.set_title(f"{name} L{row.layer} H{head}", fontsize=9)
        assert image is not None
        fig.colorbar(image, ax=axes, shrink=min(1.0, 4.0 / len(rows) + 0.2), label="attention weight")
        fig.suptitle(title or default_title, fontsize=11)
    return fig


def font_context(families: list[str]) -> Any:
    """A ``matplotlib.rc_context`` with these font families (texts created inside it keep them)."""
    import matplotlib

    return matplotlib.rc_context({"font.family": families, "axes.unicode_minus": False})


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write a figure; the format follows the file's extension (png, pdf, svg). Returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    families, _ = font_families()
    # Texts that matplotlib creates while drawing (tick labels it adds) take the fonts in force then.
    with font_context(families), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Glyph missing" for tokens drawn as U+XXXX
        fig.savefig(out, dpi=110)
    return out


def plot_attention(
    maps: AttentionMaps | SelfAttentionMaps,
    path: str | os.PathLike[str],
    *,
    kinds: tuple[str, ...] = KINDS,
    layers: list[int] | None = None,
    heads: list[int] | None = None,
    title: str | None = None,
) -> Path:
    """Draw :func:`attention_figure` and write it to ``path`` (png, pdf or svg, by the extension)."""
    fig = attention_figure(maps, kinds=kinds, layers=layers, heads=heads, title=title)
    return save_figure(fig, path)
