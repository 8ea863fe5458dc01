"""What the subcommands share: the usage error, the subparsers' type, the device a --device flag names."""

from __future__ import annotations

import argparse
from typing import TypeAlias

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


def resolve_device(name: str) -> str:
    """The torch device a --device value names: auto is CUDA where there is one, else the CPU."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return name
