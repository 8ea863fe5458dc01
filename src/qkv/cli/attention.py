"""`qkv attention`: heat maps of one sentence's attention, one image per mask-predict pass for a NAT."""

from __future__ import annotations

import argparse
from argparse import ArgumentTypeError
from pathlib import Path
from typing import Any

from qkv.cli.common import Subparsers, UsageError
from qkv.cli.flag_types import non_negative_int, output_file
from qkv.cli.translate import add_decoding_options, load_translator


def image_file(text: str) -> str:
    """A type for --out: an output file in a format matplotlib writes, known before any model is loaded."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if Path(text).suffix.lstrip(".").lower() not in formats:
        others = ", ".join(sorted(formats.keys() - {"png", "pdf", "svg"}))
        raise ArgumentTypeError(f"{text}: end an image file name in .png, .pdf or .svg (or {others})")
    return output_file(text)


def attention_kinds(text: str) -> str:
    from qkv.viz import KINDS

    unknown = [kind for kind in text.split(",") if kind not in KINDS]
    if unknown:
        raise ArgumentTypeError(f"unknown kind {unknown[0]!r}; choose from {','.join(KINDS)}")
    return text


def cmd_attention(args: argparse.Namespace) -> int:
    from qkv.models.nat import NATransformer
    from qkv.viz import KINDS, attention_weights, plot_attention

    translator = load_translator(args)
    if isinstance(translator.model, NATransformer):
        return _nat_attention(args, translator)
    target = args.target if args.target is not None else translator.translate([args.source])[0]
    maps = attention_weights(
        translator.model, translator.src_tokenizer, translator.tgt_tokenizer, args.source, target
    )
    kinds = tuple(args.kinds.split(",")) if args.kinds else KINDS
    out = plot_attention(
        maps,
        args.out,
        kinds=kinds,
        layers=args.layers,
        heads=args.heads,
        title=f"{args.source}  ->  {target}",
    )
    print(f"{args.source} -> {target}")
    print(f"wrote {out}")
    return 0


def _nat_attention(args: argparse.Namespace, translator: Any) -> int:
    """Heat maps of a non-autoregressive model: one image per mask-predict pass (FILE-iter1.png, ...)."""
    from qkv.viz import KINDS, nat_attention_weights, plot_attention

    if args.target is not None:
        raise UsageError("--target: a non-autoregressive model is not teacher-forced; leave it out")
    passes = nat_attention_weights(
        translator.model,
        translator.src_tokenizer,
        translator.tgt_tokenizer,
        args.source,
        iterations=args.iterations,
        adaptive=args.adaptive,
    )
    target = translator.translate([args.source])[0]
    kinds = tuple(args.kinds.split(",")) if args.kinds else KINDS
    out = Path(args.out)
    for number, maps in enumerate(passes, start=1):
        path = out if args.iterations == 1 else out.with_name(f"{out.stem}-iter{number}{out.suffix}")
        output = " ".join(maps.tgt_out_tokens)
        written = plot_attention(
            maps,
            path,
            kinds=kinds if number == 1 else tuple(k for k in kinds if k != "encoder") or kinds,
            layers=args.layers,
            heads=args.heads,
            title=f"{args.source}  ->  {output}  (mask-predict pass {number}/{len(passes)})",
        )
        print(f"wrote {written}")
    if len(passes) < args.iterations:
        why = "the output is too short to re-mask more tokens"
        if args.adaptive:
            why += ", or a pass changed none of them (--adaptive)"
        print(f"(stopped after {len(passes)} passes: {why})")
    print(f"{args.source} -> {target}")
    return 0


def add_attention_parser(sub: Subparsers) -> None:
    """`qkv attention` and its options."""
    p = sub.add_parser(
        "attention",
        help="draw attention heat maps for one sentence",
        description="Heat maps of encoder self-attention, decoder self-attention and cross-attention, one "
        "panel per layer and head, tokens on the axes. Without --target the model's own translation is used.",
    )
    p.add_argument("source", help="the source sentence")
    p.add_argument("--target", help="the target sentence to teacher-force (default: the model's translation)")
    p.add_argument(
        "--out",
        type=image_file,
        default="attention.png",
        help="image file: .png, .pdf or .svg (default attention.png)",
    )
    p.add_argument(
        "--kinds",
        type=attention_kinds,
        help="comma-separated subset of encoder,decoder_self,cross (default all)",
    )
    p.add_argument("--layers", type=non_negative_int, nargs="+", help="layers to draw (default all)")
    p.add_argument("--heads", type=non_negative_int, nargs="+", help="heads to draw (default all)")
    add_decoding_options(p)
    p.set_defaults(func=cmd_attention)
