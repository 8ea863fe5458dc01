"""Self-attention drawn as lines between the tokens: the two-column view of "The Illustrated Transformer"
(and of bertviz), where "it" sends its attention to "animal".

The queries are the left column, the keys the right one, and each (query, key) pair is one line whose
opacity is the attention weight. **Every pair is drawn**, however small its weight (a line of weight 0.003
is there, but too faint to see); no threshold hides any. Drawn for the tokens of one word
(:func:`word_positions`), or for every token at once.

Two outputs of the same drawing: a figure (:func:`lines_figure`, PNG/PDF/SVG through matplotlib), and a
self-contained HTML page of inline SVG (:func:`lines_html`: no script, no external file; hovering a query
highlights its lines with CSS), which a browser opens and another page can embed. Each SVG ``<line>``
carries its pair and weight as ``data-query``, ``data-key`` and ``data-weight``.
"""

from __future__ import annotations

import html
import os
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from qkv.viz import SelfAttentionMaps, font_context, save_figure
from qkv.viz_fonts import font_families, label

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LINE_COLOUR = "#1f5fa8"


def _plain(text: str) -> str:
    """A token or word compared without case, accents, WordPiece's ``##`` or Metaspace's ``▁``."""
    text = text.removeprefix("##").replace("\u2581", "").lower()
    return "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))


def word_positions(tokens: Sequence[str], word: str, occurrence: int = 1) -> list[int]:
    """The positions of the tokens that spell ``word`` (its ``occurrence``-th time in the text).

    A word is one token ("it") or several consecutive ones ("didn't" = didn ' t); case and accents do not
    matter. Raises ValueError, listing the tokens, when the word is not there that many times.
    """
    target = _plain(word.strip())
    if not target:
        raise ValueError("the word to draw is empty")
    found: list[list[int]] = []
    for start in range(len(tokens)):
        if tokens[start].startswith("##"):
            continue  # a word starts at a word's first piece
        spelled = ""
        for end in range(start, len(tokens)):
            spelled += _plain(tokens[end])
            if spelled == target and not (end + 1 < len(tokens) and tokens[end + 1].startswith("##")):
                found.append(list(range(start, end + 1)))
            if not target.startswith(spelled):
                break
    if len(found) < occurrence:
        times = "not" if not found else f"only {len(found)} time{'s' * (len(found) > 1)}"
        raise ValueError(f"{word!r} is {times} in the tokens: {' '.join(tokens)}")
    return found[occurrence - 1]


def _panels(
    maps: SelfAttentionMaps, layers: list[int] | None, heads: list[int] | None
) -> list[tuple[int, list[int]]]:
    """(layer, heads) to draw, checked."""
    n_layers, n_heads = len(maps.layers), maps.layers[0].shape[0]
    layer_ids = layers if layers is not None else list(range(n_layers))
    head_ids = heads if heads is not None else list(range(n_heads))
    for i in layer_ids:
        if not 0 <= i < n_layers:
            raise ValueError(f"layer {i} does not exist (layers 0..{n_layers - 1})")
    for h in head_ids:
        if not 0 <= h < n_heads:
            raise ValueError(f"head {h} does not exist (heads 0..{n_heads - 1})")
    return [(layer, head_ids) for layer in layer_ids]


def _default_title(maps: SelfAttentionMaps, queries: list[int]) -> str:
    if len(queries) == len(maps.tokens):
        return "self-attention of every token (left: queries, right: keys)"
    word = " ".join(maps.tokens[q] for q in queries)
    return f"attention of {word!r} (left: query, right: keys; darker line = more weight)"


# ---- as a figure ----------------------------------------------------------------------------------------------


def lines_figure(
    maps: SelfAttentionMaps,
    queries: list[int],
    *,
    layers: list[int] | None = None,
    heads: list[int] | None = None,
    title: str | None = None,
) -> Figure:
    """One panel per (layer, head): the tokens twice, queries left and keys right, and a line from each
    query in ``queries`` to every key, as opaque as its weight."""
    from matplotlib.figure import Figure

    panels = _panels(maps, layers, heads)
    n = len(maps.tokens)
    families, covered = font_families()
    labels = [label(t, covered) for t in maps.tokens]
    columns = len(panels[0][1])
    with font_context(families):
        fig = Figure(figsize=(2.6 * columns, (0.2 * n + 0.8) * len(panels) + 0.6), layout="constrained")
        axes = fig.subplots(len(panels), columns, squeeze=False)
        for r, (layer, head_ids) in enumerate(panels):
            for c, head in enumerate(head_ids):
                ax = axes[r][c]
                ax.set_xlim(0.0, 1.0)
                ax.set_ylim(n - 0.5, -1.5)
                ax.axis("off")
                ax.set_title(f"L{layer} H{head}", fontsize=9)
                ax.text(0.3, -1.0, "query", ha="right", va="center", fontsize=7, style="italic")
                ax.text(0.7, -1.0, "key", ha="left", va="center", fontsize=7, style="italic")
                weights = maps.layers[layer][head]  # (queries, keys)
                for i, text in enumerate(labels):
                    # The chosen word in colour, not bold: the bundled CJK font has no bold face.
                    colour = LINE_COLOUR if i in queries and len(queries) < n else "black"
                    ax.text(0.3, i, text, ha="right", va="center", fontsize=7, color=colour)
                    ax.text(0.7, i, text, ha="left", va="center", fontsize=7)
                for q in queries:
                    for k in range(n):
                        alpha = float(weights[q, k])
                        ax.plot([0.33, 0.67], [q, k], color=LINE_COLOUR, alpha=alpha, linewidth=1.5)
        fig.suptitle(title or _default_title(maps, queries), fontsize=11)
    return fig


# ---- as HTML ------------------------------------------------------------------------------------------------

_ROW = 18  # px between tokens
_TOP = 44  # px above the first token: the panel's title and the column headers
_WIDTH = 360
_LEFT_TEXT, _LINE_FROM, _LINE_TO, _RIGHT_TEXT = 130, 136, 224, 230

_STYLE = """
body { font-family: "DejaVu Sans", "Noto Sans CJK SC", sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.2em; } h2 { font-size: 1em; margin: 1em 0 0.3em; }
.layer { display: flex; flex-wrap: wrap; gap: 0.5em; }
svg { border: 1px solid #ddd; }
svg text { font-size: 12px; dominant-baseline: middle; }
svg text.chosen { font-weight: bold; }
svg text.header { font-style: italic; fill: #666; font-size: 11px; }
svg text.title { font-size: 12px; font-weight: bold; }
svg line { stroke: {colour}; stroke-width: 2; }
svg g.query:hover line { stroke: #d62728; }
""".replace("{colour}", LINE_COLOUR)


def _svg_panel(maps: SelfAttentionMaps, layer: int, head: int, queries: list[int]) -> str:
    n = len(maps.tokens)
    weights = maps.layers[layer][head]
    height = _TOP + _ROW * n
    y = [_TOP + _ROW * i + _ROW // 2 for i in range(n)]
    chosen = set(queries) if len(queries) < n else set()
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_WIDTH} {height}" data-layer="{layer}" data-head="{head}">',
        f'<text class="title" x="{_WIDTH // 2}" y="14" text-anchor="middle">layer {layer}, head {head}</text>',
        f'<text class="header" x="{_LEFT_TEXT}" y="32" text-anchor="end">query</text>',
        f'<text class="header" x="{_RIGHT_TEXT}" y="32">key</text>',
    ]
    for k, token in enumerate(maps.tokens):
        parts.append(f'<text x="{_RIGHT_TEXT}" y="{y[k]}">{html.escape(token)}</text>')
    for q, token in enumerate(maps.tokens):
        css = ' class="chosen"' if q in chosen else ""
        if q not in queries:
            parts.append(
                f'<text x="{_LEFT_TEXT}" y="{y[q]}" text-anchor="end"{css}>{html.escape(token)}</text>'
            )
            continue
        parts.append(f'<g class="query" data-query="{q}">')
        parts.append(f'<text x="{_LEFT_TEXT}" y="{y[q]}" text-anchor="end"{css}>{html.escape(token)}</text>')
        for k in range(n):
            weight = float(weights[q, k])
            parts.append(
                f'<line x1="{_LINE_FROM}" y1="{y[q]}" x2="{_LINE_TO}" y2="{y[k]}" stroke-opacity="{weight:.4f}" '
                f'data-query="{q}" data-key="{k}" data-weight="{weight:.7f}"/>'
            )
        parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts)


def lines_html(
    maps: SelfAttentionMaps,
    queries: list[int],
    *,
    layers: list[int] | None = None,
    heads: list[int] | None = None,
    title: str | None = None,
) -> str:
    """The same drawing as :func:`lines_figure`, as one self-contained HTML page of inline SVG: one
    ``<svg>`` per (layer, head), one ``<line>`` per (query in ``queries``, key)."""
    heading = title or _default_title(maps, queries)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        f"<title>{html.escape(heading)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{html.escape(heading)}</h1>",
        f"<p>Text: {html.escape(' '.join(maps.tokens))}</p>",
        "<p>Each line joins a query (left) to a key (right); its opacity is the attention weight, and every "
        "pair is drawn. Hover over a query to highlight its lines.</p>",
    ]
    for layer, head_ids in _panels(maps, layers, heads):
        parts.append(f'<h2>layer {layer}</h2>\n<div class="layer">')
        parts += [_svg_panel(maps, layer, head, queries) for head in head_ids]
        parts.append("</div>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def write_lines(
    maps: SelfAttentionMaps,
    path: str | os.PathLike[str],
    queries: list[int],
    *,
    layers: list[int] | None = None,
    heads: list[int] | None = None,
    title: str | None = None,
) -> Path:
    """Write the drawing: an .html (or .htm) file as :func:`lines_html`, any other extension as an image."""
    out = Path(path)
    if out.suffix.lower() in (".html", ".htm"):
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(lines_html(maps, queries, layers=layers, heads=heads, title=title), encoding="utf-8")
        return out
    return save_figure(lines_figure(maps, queries, layers=layers, heads=heads, title=title), out)
