"""`qkv import`: a model another toolkit wrote, written once as a qkv model directory."""

from __future__ import annotations

import argparse

from qkv.cli.common import Subparsers, add_overwrite_option
from qkv.cli.flag_types import input_directory, output_directory


def cmd_import(args: argparse.Namespace) -> int:
    from qkv.convert.native import import_model

    out = import_model(args.model, args.out, overwrite=args.overwrite)
    print(f"wrote {out} (a qkv model directory)")
    return 0


def add_import_parser(sub: Subparsers) -> None:
    """`qkv import` and its options."""
    p = sub.add_parser(
        "import",
        help="write a Hugging Face Marian (OPUS-MT) or Marian release model as a qkv model directory",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read a Hugging Face MarianMTModel directory (config.json, model.safetensors, "
        "source.spm, target.spm, vocab.json) or a Marian release directory (.npz, decoder.yml, *.vocab.yml, "
        "spm files) and write it as a qkv model directory. qkv translate, evaluate, attention, export and "
        "train --init-from also read those directories as they are; nothing is ever unpickled.",
        epilog="example:\n  qkv import --model opus-mt-zh-en --out models/opus-mt-zh-en\n",
    )
    p.add_argument(
        "--model", type=input_directory, metavar="DIR", required=True, help="the Marian directory to read"
    )
    p.add_argument(
        "--out", type=output_directory, metavar="DIR", required=True, help="model directory to write"
    )
    add_overwrite_option(p)
    p.set_defaults(func=cmd_import)
