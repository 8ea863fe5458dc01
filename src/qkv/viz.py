"""Attention heat maps: encoder self-attention, decoder self-attention and cross-attention, per layer
and head, with the tokens on the axes.

:func:`attention_weights` returns the weights (for your own analysis); :func:`plot_attention` draws them.
Chinese tokens are drawn with a CJK font: a system one when installed (Noto Sans CJK, WenQuanYi,
Source Han Sans, ...), else the subset of WenQuanYi Micro Hei that ships with qkv; characters that
neither covers are drawn as their code point (U+XXXX) rather than as empty boxes.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from qkv.decode.nat import NATIteration, mask_predict
from qkv.models.nat import NATransformer
from qkv.models.seq2seq import Transformer
from qkv.tokenize import Tokenizer

SYSTEM_CJK_FONTS = (
    "Noto Sans CJK SC",
    "Noto Sans SC",
    "Source Han Sans SC",
    "WenQuanYi Micro Hei",
    "WenQuanYi Zen Hei",
    "Droid Sans Fallback",
    "PingFang SC",
    "Microsoft YaHei",
    "SimHei",
)
BUNDLED_FONT = "wqy-microhei-subset.ttf"
KINDS = ("encoder", "decoder_self", "cross")


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


@torch.inference_mode()
def attention_weights(
    model: Transformer, src_tokenizer: Tokenizer, tgt_tokenizer: Tokenizer, source: str, target: str
) -> AttentionMaps:
    """Run the model on one (source, target) pair by teacher forcing and collect every attention weight."""
    c = model.config
    device = next(model.parameters()).device
    src_ids = [*src_tokenizer.encode(source), c.eos_id]
    tgt_ids = tgt_tokenizer.encode(target)
    src = torch.tensor([src_ids], device=device)
    tgt_in = torch.tensor([[c.bos_id, *tgt_ids]], device=device)
    encoded = model.encode(src, need_weights=True)
    decoded = model.decode(tgt_in, encoded, need_weights=True)
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


def _font_families() -> tuple[list[str], Any]:
    """Matplotlib font families with a CJK fallback, and the CJK font's properties (or None)."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    custom = os.environ.get("QKV_CJK_FONT")
    if custom and Path(custom).is_file():
        font_manager.fontManager.addfont(custom)
        props = font_manager.FontProperties(fname=custom)
        return ["DejaVu Sans", props.get_name()], props
    for name in SYSTEM_CJK_FONTS:
        if name in installed:
            return ["DejaVu Sans", name], font_manager.FontProperties(family=name)
    path = resources.files("qkv") / "fonts" / BUNDLED_FONT
    if Path(str(path)).is_file():
        font_manager.fontManager.addfont(str(path))
        props = font_manager.FontProperties(fname=str(path))
        return ["DejaVu Sans", props.get_name()], props
    return ["DejaVu Sans"], None


def _covered(cjk_props: Any) -> set[int] | None:
    """Code points the CJK font has glyphs for (None: unknown, assume all)."""
    if cjk_props is None:
        return set()
    try:
        from fontTools.ttLib import TTFont
        from matplotlib import font_manager

        font = TTFont(font_manager.findfont(cjk_props), fontNumber=0, lazy=True)
        return set(font.getBestCmap())
    except Exception:
        return None


def _label(token: str, covered: set[int] | None) -> str:
    """A token as drawn: the Metaspace marker as a visible space, unknown glyphs as U+XXXX."""
    text = token.replace("\u2581", "_")
    if covered is None:
        return text
    return "".join(ch if ord(ch) < 0x2E80 or ord(ch) in covered else f"U+{ord(ch):04X}" for ch in text)


def plot_attention(
    maps: AttentionMaps,
    path: str | os.PathLike[str],
    *,
    kinds: tuple[str, ...] = KINDS,
    layers: list[int] | None = None,
    heads: list[int] | None = None,
    title: str | None = None,
) -> Path:
    """Draw one panel per (kind, layer, head): rows of layers, columns of heads. Returns the file written.

    The format follows the file's extension (png, pdf, svg).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for kind in kinds:
        maps.axes(kind)  # validates the kind
    n_layers = len(maps.encoder)
    n_heads = maps.encoder[0].shape[0]
    layer_ids = layers if layers is not None else list(range(n_layers))
    head_ids = heads if heads is not None else list(range(n_heads))
    for i in layer_ids:
        if not 0 <= i < max(len(maps.layers(k)) for k in kinds):
            raise ValueError(f"layer {i} does not exist (layers 0..{n_layers - 1})")
    for h in head_ids:
        if not 0 <= h < n_heads:
            raise ValueError(f"head {h} does not exist (heads 0..{n_heads - 1})")

    families, cjk = _font_families()
    covered = _covered(cjk)
    rows = [(kind, layer) for kind in kinds for layer in layer_ids if layer < len(maps.layers(kind))]
    longest = max(len(maps.src_tokens), len(maps.tgt_in_tokens))
    cell = max(2.2, 0.28 * longest + 0.8)
    with plt.rc_context({"font.family": families, "axes.unicode_minus": False}):
        fig, axes = plt.subplots(
            len(rows), len(head_ids), figsize=(cell * len(head_ids), cell * len(rows)), squeeze=False
        )
        for r, (kind, layer) in enumerate(rows):
            y_labels, x_labels = maps.axes(kind)
            for c, head in enumerate(head_ids):
                ax = axes[r][c]
                weights = maps.layers(kind)[layer][head].numpy()
                ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
                ax.set_xticks(range(len(x_labels)))
                ax.set_xticklabels([_label(t, covered) for t in x_labels], rotation=90, fontsize=8)
                ax.set_yticks(range(len(y_labels)))
                ax.set_yticklabels([_label(t, covered) for t in y_labels], fontsize=8)
                ax.set_title(f"{kind.replace('_', ' ')} L{layer} H{head}", fontsize=9)
        fig.suptitle(title or "attention weights (rows: queries, columns: keys)", fontsize=11)
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Glyph missing" for tokens drawn as U+XXXX
            fig.savefig(out, dpi=110)
        plt.close(fig)
    return out
