"""`qkv attention`: pictures of one sentence's attention.

A translation model: heat maps of encoder self-attention, decoder self-attention and cross-attention (one
image per mask-predict pass for a NAT). A BERT / encoder-only checkpoint (a Hugging Face BERT directory or
sentence-transformers folder, as `qkv embed` loads it): heat maps of every layer and head, or with --word
one word's attention as lines between the tokens, as an image or a self-contained HTML page.
"""

from __future__ import annotations

import argparse
from argparse import ArgumentTypeError
from pathlib import Path
from typing import Any

from qkv.cli.common import Subparsers, UsageError
from qkv.cli.flag_types import non_negative_int, output_file, positive_int
from qkv.cli.translate import add_decoding_options, load_translator

HTML_SUFFIXES = (".html", ".htm")


def picture_file(text: str) -> str:
    """A type for --out: an HTML page or an image in a format matplotlib writes, known before any model
    is loaded."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(text).suffix.lower()
    if suffix not in HTML_SUFFIXES and suffix.lstrip(".") not in formats:
        others = ", ".join(sorted(formats.keys() - {"png", "pdf", "svg"}))
        raise ArgumentTypeError(
            f"{text}: end an image file name in .png, .pdf or .svg (or {others}; a BERT model also .html)"
        )
    return output_file(text)


def _is_bert_directory(path: str) -> bool:
    """True for a Hugging Face BERT directory or sentence-transformers folder (config.json says
    model_type "bert"); a qkv translation model's config.json says qkv-seq2seq or qkv-nat."""
    from qkv.models.bert_files import read_json_file, transformer_dir

    try:
        config_file = transformer_dir(path) / "config.json"
        if not config_file.is_file():
            return False
        data = read_json_file(config_file)
    except (OSError, ValueError):  # unreadable here (CheckpointError is a ValueError): the loader reports it
        return False
    return isinstance(data, dict) and data.get("model_type") == "bert"


def attention_kinds(text: str) -> str:
    from qkv.viz import KINDS

    unknown = [kind for kind in text.split(",") if kind not in KINDS]
    if unknown:
        raise ArgumentTypeError(f"unknown kind {unknown[0]!r}; choose from {','.join(KINDS)}")
    return text


def cmd_attention(args: argparse.Namespace) -> int:
    from qkv.models.nat import NATransformer
    from qkv.viz import KINDS, attention_weights, plot_attention

    if _is_bert_directory(args.model):
        return _bert_attention(args)
    if args.word is not None or Path(args.out).suffix.lower() in HTML_SUFFIXES:
        raise UsageError(
            f"--word and .html outputs draw a BERT model's self-attention; {args.model} is a translation "
            "model: give an image file (.png, .pdf, .svg) for its heat maps"
        )
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


def _bert_attention(args: argparse.Namespace) -> int:
    """A BERT model's self-attention: heat maps, or one word's attention as lines (--word, or .html)."""
    from qkv.embed import SentenceEmbedder
    from qkv.models.bert_hf import CheckpointError
    from qkv.viz import bert_attention_weights, plot_attention
    from qkv.viz_lines import word_positions, write_lines

    if args.target is not None:
        raise UsageError("--target: a BERT model has no target side; leave it out")
    try:
        embedder = SentenceEmbedder.from_pretrained(args.model)
    except (CheckpointError, FileNotFoundError) as e:
        raise UsageError(str(e)) from e
    maps = bert_attention_weights(embedder, args.source)
    print(" ".join(maps.tokens))
    queries: list[int] | None = None  # None: heat maps
    if args.word is not None:
        try:
            queries = word_positions(maps.tokens, args.word, args.occurrence)
        except ValueError as e:
            raise UsageError(f"--word: {e}") from e
    elif Path(args.out).suffix.lower() in HTML_SUFFIXES:
        queries = list(range(len(maps.tokens)))  # every token's lines
    try:
        if queries is None:
            out = plot_attention(maps, args.out, layers=args.layers, heads=args.heads, title=args.source)
        else:
            out = write_lines(maps, args.out, queries, layers=args.layers, heads=args.heads)
    except ValueError as e:  # a layer or head the model does not have
        raise UsageError(str(e)) from e
    print(f"wrote {out}")
    return 0


def add_attention_parser(sub: Subparsers) -> None:
    """`qkv attention` and its options."""
    p = sub.add_parser(
        "attention",
        help="draw attention heat maps for one sentence",
        description="Heat maps of encoder self-attention, decoder self-attention and cross-attention, one "
        "panel per layer and head, tokens on the axes (rows: queries, columns: keys). Without --target the "
        "model's own translation is used. With a BERT checkpoint (--model a Hugging Face BERT directory): "
        "heat maps of every layer and head, or with --word that word's attention as lines between the "
        "tokens (left: query, right: keys), as an image or, with --out FILE.html, a self-contained page.",
    )
    p.add_argument("source", help="the source sentence (for a BERT model: the text)")
    p.add_argument("--target", help="the target sentence to teacher-force (default: the model's translation)")
    p.add_argument(
        "--out",
        type=picture_file,
        default="attention.png",
        help="image file: .png, .pdf or .svg (default attention.png); BERT models: also .html",
    )
    p.add_argument(
        "--kinds",
        type=attention_kinds,
        help="comma-separated subset of encoder,decoder_self,cross (default all)",
    )
    p.add_argument("--layers", type=non_negative_int, nargs="+", help="layers to draw (default all)")
    p.add_argument("--heads", type=non_negative_int, nargs="+", help="heads to draw (default all)")
    p.add_argument(
        "--word",
        help="BERT models: draw this word's attention as lines to every token (e.g. --word it)",
    )
    p.add_argument(
        "--occurrence",
        type=positive_int,
        default=1,
        help="with --word: which occurrence of the word, if it occurs more than once (default 1)",
    )
    add_decoding_options(p)
    p.set_defaults(func=cmd_attention)
