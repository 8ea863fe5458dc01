"""The ``qkv`` command: one thin function per subcommand; the work happens in the packages.

This module assembles the subcommands' parsers (each lives beside its command function) and turns what a
command raises into a message and an exit code. Run ``qkv --help`` or ``qkv SUBCOMMAND --help``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from qkv.cli.attention import add_attention_parser
from qkv.cli.bert import add_embed_parser, add_finetune_parser
from qkv.cli.common import UsageError
from qkv.cli.demo import add_demo_parser
from qkv.cli.distill import add_distill_parser
from qkv.cli.models import add_average_parser, add_export_parser
from qkv.cli.params import add_params_parser
from qkv.cli.train import add_train_parser
from qkv.cli.translate import add_evaluate_parser, add_translate_parser
from qkv.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qkv",
        description="qkv: the Transformer of 'Attention Is All You Need', as real, fast, readable software.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  qkv params --preset base --vocab 37000 --check   # the paper's base model, line by line\n"
        "  qkv demo                                         # the built-in demo\n"
        "  qkv train --out runs/demo --preset tiny --max-minutes 2\n"
        '  qkv translate --model runs/demo "我爱你"\n'
        "run `qkv COMMAND --help` for every option of a command\n",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_parser in (
        add_params_parser,
        add_train_parser,
        add_translate_parser,
        add_evaluate_parser,
        add_attention_parser,
        add_embed_parser,
        add_average_parser,
        add_finetune_parser,
        add_distill_parser,
        add_export_parser,
        add_demo_parser,
    ):
        add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        code: int = args.func(args)
    except (UsageError, ConfigError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"qkv {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qkv {args.command}: interrupted", file=sys.stderr)
        return 130
    return code
