"""`qkv average` and `qkv export`: new model directories written from saved ones."""

from __future__ import annotations

import argparse

from qkv.cli.common import Subparsers, add_overwrite_option
from qkv.cli.flag_types import input_directory, output_directory, positive_int


def cmd_average(args: argparse.Namespace) -> int:
    from qkv.averaging import average_run

    out, chosen = average_run(args.run, args.last, args.out, overwrite=args.overwrite)
    print(f"averaged {len(chosen)} checkpoints ({chosen[0].name} .. {chosen[-1].name}) into {out}")
    return 0


def add_average_parser(sub: Subparsers) -> None:
    """`qkv average` and its options."""
    p = sub.add_parser(
        "average",
        help="average the weights of a run's last N checkpoints",
        description="Write the element-wise mean of the last N checkpoints of a run as a model directory "
        "(the paper averages the last 5). Train with --keep-last N or more.",
    )
    p.add_argument("--run", type=input_directory, metavar="DIR", required=True, help="the run directory")
    p.add_argument("--last", type=positive_int, default=5, help="how many checkpoints (default 5)")
    p.add_argument(
        "--out", type=output_directory, metavar="DIR", required=True, help="model directory to write"
    )
    add_overwrite_option(p)
    p.set_defaults(func=cmd_average)


def cmd_export(args: argparse.Namespace) -> int:
    if args.format == "marian":
        from qkv.export.marian import export_marian

        out = export_marian(args.model, args.out, overwrite=args.overwrite)
    else:
        from qkv.export.ctranslate2 import export_ctranslate2

        out = export_ctranslate2(
            args.model, args.out, quantization=args.quantization, overwrite=args.overwrite
        )
    print(f"wrote {out} ({args.format})")
    return 0


def add_export_parser(sub: Subparsers) -> None:
    """`qkv export` and its options."""
    p = sub.add_parser(
        "export",
        help="write a translation model in Hugging Face Marian or CTranslate2 layout",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export a qkv model directory (or a run directory's best model, or a Marian/OPUS-MT "
        "directory in Hugging Face's or Marian's release layout) so other toolkits run it with the same "
        "outputs: --format marian writes a Hugging Face MarianMTModel directory (post-LN, sinusoidal "
        "models), --format ctranslate2 a CTranslate2 model (any qkv model; needs pip install ctranslate2).",
        epilog="examples:\n"
        "  qkv export --model runs/zh-en --format marian --out runs/zh-en-marian\n"
        "  qkv export --model runs/zh-en --format ctranslate2 --out runs/zh-en-ct2 --quantization int8\n",
    )
    p.add_argument(
        "--model",
        type=input_directory,
        metavar="DIR",
        required=True,
        help="qkv model or run directory, or a Marian (OPUS-MT) directory",
    )
    p.add_argument("--format", choices=["marian", "ctranslate2"], required=True, help="the layout to write")
    p.add_argument(
        "--out",
        type=output_directory,
        metavar="DIR",
        required=True,
        help="output directory (an earlier export there is replaced)",
    )
    p.add_argument(
        "--quantization",
        default=None,
        help="ctranslate2 only: int8, int8_float32, float16, bfloat16, ... (default: float32)",
    )
    add_overwrite_option(p)
    p.set_defaults(func=cmd_export)
