"""Fonts for drawing tokens: Chinese tokens need a CJK font, and none may be drawn as an empty box.

A system CJK font is used when one is installed (Noto Sans CJK, WenQuanYi, Source Han Sans, ...), else the
subset of WenQuanYi Micro Hei that ships with qkv (``qkv/fonts``); characters that neither covers are drawn
as their code point (U+XXXX). ``QKV_CJK_FONT=/path/to/font.ttf`` picks another font file.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

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


def font_families() -> tuple[list[str], set[int] | None]:
    """Matplotlib font families with a CJK fallback, and the code points the CJK font covers
    (None: unknown, assume all)."""
    families, cjk = _families()
    return families, _covered(cjk)


def _families() -> tuple[list[str], Any]:
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


def label(token: str, covered: set[int] | None) -> str:
    """A token as drawn: the Metaspace marker as a visible space, unknown glyphs as U+XXXX."""
    text = token.replace("\u2581", "_")
    if covered is None:
        return text
    return "".join(ch if ord(ch) < 0x2E80 or ord(ch) in covered else f"U+{ord(ch):04X}" for ch in text)
