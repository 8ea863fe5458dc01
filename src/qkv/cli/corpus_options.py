"""The corpus and tokenizer options that `qkv train` and `qkv prepare` share, and their checks: one
definition, so a corpus is named the same way to both commands."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from qkv.cli.common import UsageError
from qkv.cli.flag_types import input_file, positive_int


def add_corpus_options(
    g: argparse._ArgumentGroup, *, data_type: Callable[[str], str], data_help: str, valid_help: str
) -> None:
    """--data (read with ``data_type``), --src/--tgt, --valid, --valid-src/--valid-tgt, --src-col,
    --tgt-col, --skip-bad and --max-chars."""
    g.add_argument("--data", type=data_type, metavar="FILE", help=data_help)
    g.add_argument(
        "--src",
        type=input_file,
        metavar="FILE",
        help="source side of two aligned plain-text files (with --tgt)",
    )
    g.add_argument(
        "--tgt",
        type=input_file,
        metavar="FILE",
        help="target side of two aligned plain-text files (with --src)",
    )
    g.add_argument("--valid", type=input_file, metavar="FILE", help=valid_help)
    g.add_argument(
        "--valid-src", type=input_file, metavar="FILE", help="validation source file (with --valid-tgt)"
    )
    g.add_argument("--valid-tgt", type=input_file, metavar="FILE", help="validation target file")
    g.add_argument(
        "--src-col", type=positive_int, default=1, help="TSV column of the source, 1-based (default 1)"
    )
    g.add_argument(
        "--tgt-col", type=positive_int, default=2, help="TSV column of the target, 1-based (default 2)"
    )
    g.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip bad lines and count them by kind (default: stop at the first, naming file and line)",
    )
    g.add_argument(
        "--max-chars",
        type=positive_int,
        default=2000,
        help="longest line side accepted, in characters (default 2000)",
    )


def check_corpus_options(args: argparse.Namespace) -> None:
    """UsageError for corpus flags that do not go together (--data with --src, --src without --tgt, and
    the same for the validation files)."""
    if args.data and args.src:
        raise UsageError("give either --data FILE (TSV or JSONL) or --src FILE --tgt FILE, not both")
    if bool(args.src) != bool(args.tgt):
        raise UsageError("--src and --tgt go together: two aligned plain-text files")
    if args.valid and args.valid_src:
        raise UsageError("give either --valid FILE or --valid-src FILE --valid-tgt FILE, not both")
    if bool(args.valid_src) != bool(args.valid_tgt):
        raise UsageError("--valid-src and --valid-tgt go together: two aligned plain-text files")


def add_tokenizer_options(g: argparse._ArgumentGroup) -> None:
    """--tokenizer, --vocab-size and --separate-vocab: the tokenizer a corpus trains."""
    g.add_argument(
        "--tokenizer",
        choices=["bpe", "char"],
        default="bpe",
        help="bpe (Chinese characters stay single tokens, English gets subwords) or char",
    )
    g.add_argument("--vocab-size", type=positive_int, default=8000, help="BPE vocabulary size (default 8000)")
    g.add_argument(
        "--separate-vocab",
        action="store_true",
        help="one vocabulary per side instead of one joint vocabulary (embeddings then unshared)",
    )
