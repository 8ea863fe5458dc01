"""The ``qkv`` command: one thin function per subcommand; the work happens in the packages.

This module assembles the subcommands' parsers (each lives beside its command function) and turns what a
command raises into a message and an exit code. Run ``qkv --help`` or ``qkv SUBCOMMAND --help``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from qkv import __version__
from qkv.cli.attention import add_attention_parser
from qkv.cli.bert import add_embed_parser, add_finetune_parser
from qkv.cli.config_files import dump_config, with_config_file
from qkv.cli.demo import add_demo_parser
from qkv.cli.distill import add_distill_parser
from qkv.cli.errors import DEBUG_VARIABLE, run_reporting_errors
from qkv.cli.import_model import add_import_parser
from qkv.cli.models import add_average_parser, add_export_parser
from qkv.cli.params import add_params_parser
from qkv.cli.prepare import add_prepare_parser
from qkv.cli.serve import add_serve_parser
from qkv.cli.train import add_train_parser
from qkv.cli.translate import add_evaluate_parser, add_translate_parser


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
        "run `qkv COMMAND --help` for every option of a command\n"
        "\nexit codes:\n"
        "  0        done\n"
        "  1        could not finish: a full disk, a permission, an I/O error, or a bug in qkv\n"
        "  2        bad usage or input: a flag, a file or what is in it\n"
        "  3        qkv train: a non-finite loss\n"
        "  130/143  interrupted (SIGINT/SIGTERM)\n"
        "  141      the output was closed early (qkv translate ... | head), as for SIGPIPE\n"
        f"an error is one line on stderr; set {DEBUG_VARIABLE}=1 to see its Python traceback instead\n"
        "\nthreads: OpenMP's waiting threads spin briefly, then sleep (GOMP_SPINCOUNT=3000 unless you set it or\n"
        "OMP_WAIT_POLICY), so qkv shares a busy machine fairly\n",
    )
    parser.add_argument("--version", action="version", version=f"qkv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_parser in (
        add_params_parser,
        add_prepare_parser,
        add_train_parser,
        add_translate_parser,
        add_evaluate_parser,
        add_attention_parser,
        add_embed_parser,
        add_average_parser,
        add_finetune_parser,
        add_distill_parser,
        add_export_parser,
        add_import_parser,
        add_demo_parser,
        add_serve_parser,
    ):
        add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2

    def run(args: argparse.Namespace) -> int:
        # A command with --config (qkv.cli.config_files): the file's values under the command line's flags.
        if getattr(args, "config", None) is not None:
            args = with_config_file(parser, args, argv)
        if getattr(args, "dump_config", False):
            print(dump_config(args), end="")
            return 0
        return int(args.func(args))

    return run_reporting_errors(args.command, run, args)
