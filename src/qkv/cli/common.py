"""What the subcommands share: the usage error, the subparsers' type, shared options, the device a --device
flag names."""

from __future__ import annotations

import argparse
from typing import TypeAlias

from qkv.cli.flag_types import input_file, positive_int

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class UsageError(Exception):
    """A problem with what the user asked for; printed without a traceback, exit code 2."""


def add_overwrite_option(p: argparse.ArgumentParser) -> None:
    """--overwrite, for the commands whose --out would otherwise refuse a path holding what qkv did not write."""
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT even if it holds files qkv did not write; never allowed when OUT is or contains the input",
    )


def add_pair_file_options(p: argparse.ArgumentParser, *, target: str) -> None:
    """--data (TSV/JSONL pairs, or a plain source file with --tgt), --tgt, --src-col and --tgt-col, for the
    commands that read a parallel corpus; ``target`` names its target side in the help ("reference")."""
    p.add_argument(
        "--data",
        type=input_file,
        metavar="FILE",
        required=True,
        help="TSV/JSONL pairs, or the source file with --tgt",
    )
    p.add_argument(
        "--tgt", type=input_file, metavar="FILE", help=f"{target} file (when --data is a plain source file)"
    )
    p.add_argument("--src-col", type=positive_int, default=1, help="TSV source column, 1-based (default 1)")
    p.add_argument(
        "--tgt-col", type=positive_int, default=2, help=f"TSV {target} column, 1-based (default 2)"
    )


def resolve_device(name: str) -> str:
    """The torch device a --device value names: auto is CUDA where there is one, else the CPU."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return name
